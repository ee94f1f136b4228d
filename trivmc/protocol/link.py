"""The link handshake: codecs for SpiceLinkHeader / SpiceLinkMess / SpiceLinkReply and
sans-IO state machines for the server and the client side.

Server machine, in spice-server's order (spec section 1.8): header (magic, major,
size bounds) -> SpiceLinkMess (caps bounds) -> `LinkRequest` event; the caller answers
`accept(public_key, channel_caps)` or `refuse(code)`; then the auth mechanism (only when
both sides set AUTH_SELECTION) and the 128-byte ticket -> `TicketReceived`; the caller
answers `result(code)`. Bytes fed after the ticket are kept in `trailing`.

Client machine: `initiate()` -> header + SpiceLinkMess; the OK reply queues the
mechanism (when both set AUTH_SELECTION) and the encrypted ticket (`data_to_send()`);
the u32 result gives `Linked` or `LinkFailed`.

Neither machine raises on bad peer input: every failure is a `LinkFailed` event.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from .constants import (
    MAGIC,
    PUBKEY_SIZE,
    TICKET_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    VMC_CHANNEL_TYPES,
    AuthMechanism,
    CommonCap,
    LinkError,
    VmcCap,
    caps_to_words,
    has_cap,
)
from .errors import LinkProtocolError, TruncatedMessage
from .ticket import check_password, encrypt_ticket

_HEADER = struct.Struct("<4sIII")
_MESS = struct.Struct("<IBBIII")
_REPLY_HEAD = struct.Struct("<I")
_REPLY_TAIL = struct.Struct("<III")
_U32 = struct.Struct("<I")

LINK_HEADER_SIZE = _HEADER.size  # 16
LINK_MESS_SIZE = _MESS.size  # 18
LINK_REPLY_SIZE = 4 + PUBKEY_SIZE + _REPLY_TAIL.size  # 178
MAX_LINK_SIZE = 4096
MAX_CAPS_WORDS = 1024

SERVER_COMMON_CAPS = (
    CommonCap.PROTOCOL_AUTH_SELECTION,
    CommonCap.AUTH_SPICE,
    CommonCap.MINI_HEADER,
)
CLIENT_COMMON_CAPS = SERVER_COMMON_CAPS


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """SpiceLinkHeader: "REDQ", major, minor, size of what follows."""

    size: int
    major: int = VERSION_MAJOR
    minor: int = VERSION_MINOR
    magic: bytes = MAGIC

    def encode(self) -> bytes:
        return _HEADER.pack(self.magic, self.major, self.minor, self.size)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        if len(data) < _HEADER.size:
            raise TruncatedMessage("link header shorter than 16 bytes")
        magic, major, minor, size = _HEADER.unpack_from(data, 0)
        return cls(size, major, minor, bytes(magic))


def _read_caps(
    data: bytes | bytearray | memoryview, ncommon: int, nchannel: int, offset: int, fixed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if ncommon > MAX_CAPS_WORDS or nchannel > MAX_CAPS_WORDS:
        raise LinkProtocolError(LinkError.INVALID_DATA, "too many capability words")
    n = ncommon + nchannel
    if n and (offset < fixed or offset + 4 * n > len(data)):
        raise LinkProtocolError(LinkError.INVALID_DATA, "capabilities out of bounds")
    words = struct.unpack_from(f"<{n}I", data, offset) if n else ()
    return tuple(words[:ncommon]), tuple(words[ncommon:])


@dataclass(frozen=True, slots=True)
class LinkMess:
    """SpiceLinkMess: the client's link request, with its capability words."""

    connection_id: int
    channel_type: int
    channel_id: int
    common_caps: tuple[int, ...] = ()
    channel_caps: tuple[int, ...] = ()

    def encode(self) -> bytes:
        words = self.common_caps + self.channel_caps
        return _MESS.pack(
            self.connection_id,
            self.channel_type,
            self.channel_id,
            len(self.common_caps),
            len(self.channel_caps),
            _MESS.size,
        ) + struct.pack(f"<{len(words)}I", *words)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode; raise `LinkProtocolError(INVALID_DATA)` on bad sizes or caps bounds."""
        if len(data) < _MESS.size:
            raise LinkProtocolError(LinkError.INVALID_DATA, "SpiceLinkMess too short")
        cid, ctype, chid, ncommon, nchannel, offset = _MESS.unpack_from(data, 0)
        common, channel = _read_caps(data, ncommon, nchannel, offset, _MESS.size)
        return cls(cid, ctype, chid, common, channel)

    def has_common(self, cap: int) -> bool:
        return has_cap(self.common_caps, cap)

    def has_channel(self, cap: int) -> bool:
        return has_cap(self.channel_caps, cap)


@dataclass(frozen=True, slots=True)
class LinkReply:
    """SpiceLinkReply: error, the 162-byte public key, capability words."""

    error: int
    pub_key: bytes = bytes(PUBKEY_SIZE)
    common_caps: tuple[int, ...] = ()
    channel_caps: tuple[int, ...] = ()

    def encode(self) -> bytes:
        if len(self.pub_key) != PUBKEY_SIZE:
            raise ValueError(f"public key must be {PUBKEY_SIZE} bytes")
        words = self.common_caps + self.channel_caps
        return (
            _REPLY_HEAD.pack(self.error)
            + self.pub_key
            + _REPLY_TAIL.pack(len(self.common_caps), len(self.channel_caps), LINK_REPLY_SIZE)
            + struct.pack(f"<{len(words)}I", *words)
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        if len(data) < LINK_REPLY_SIZE:
            if len(data) >= 4:
                # a short error reply still carries its code
                (err,) = _REPLY_HEAD.unpack_from(data, 0)
                if err:
                    return cls(err)
            raise LinkProtocolError(LinkError.INVALID_DATA, "SpiceLinkReply too short")
        (err,) = _REPLY_HEAD.unpack_from(data, 0)
        key = bytes(data[4 : 4 + PUBKEY_SIZE])
        ncommon, nchannel, offset = _REPLY_TAIL.unpack_from(data, 4 + PUBKEY_SIZE)
        common, channel = _read_caps(data, ncommon, nchannel, offset, LINK_REPLY_SIZE)
        return cls(err, key, common, channel)

    def has_common(self, cap: int) -> bool:
        return has_cap(self.common_caps, cap)

    def has_channel(self, cap: int) -> bool:
        return has_cap(self.channel_caps, cap)


def encode_reply(reply: LinkReply) -> bytes:
    """A SpiceLinkHeader followed by `reply`."""
    body = reply.encode()
    return LinkHeader(len(body)).encode() + body


def error_reply(code: LinkError) -> bytes:
    """The error form: header size 178, a reply all zero but `error`, no caps."""
    return (
        LinkHeader(LINK_REPLY_SIZE).encode() + _REPLY_HEAD.pack(code) + bytes(LINK_REPLY_SIZE - 4)
    )


def encode_result(code: LinkError) -> bytes:
    """The u32 link result."""
    return _U32.pack(code)


# ---- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """Server side: a well-formed SpiceLinkMess arrived; call accept() or refuse()."""

    mess: LinkMess


@dataclass(frozen=True, slots=True)
class TicketReceived:
    """Server side: the encrypted ticket arrived; verify it and call result()."""

    ticket: bytes
    mechanism: AuthMechanism


@dataclass(frozen=True, slots=True)
class LinkReplyReceived:
    """Client side: the server's OK reply arrived (mechanism + ticket are queued)."""

    reply: LinkReply


@dataclass(frozen=True, slots=True)
class Linked:
    """Client side: the link result was OK. `mini_header` is the negotiated framing;
    `peer_lz4` tells whether the server takes COMPRESSED_DATA on this VMC channel."""

    mini_header: bool
    peer_common_caps: tuple[int, ...]
    peer_channel_caps: tuple[int, ...]
    peer_lz4: bool = False


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The link failed with `code`; send `data` (may be empty) and close."""

    code: LinkError
    data: bytes = b""
    reason: str = ""


LinkEvent = LinkRequest | TicketReceived | LinkReplyReceived | Linked | LinkFailed


def _magic_ok(buf: bytearray) -> bool:
    """False once 4 bytes are in and they are not "REDQ" (spice-server reads the magic
    alone; a caller sniffing for WebSocket sees "GET " complete first)."""
    return len(buf) < 4 or buf[:4] == MAGIC


class _S(enum.Enum):
    HEADER = enum.auto()
    BODY = enum.auto()
    DECIDE = enum.auto()
    MECHANISM = enum.auto()
    TICKET = enum.auto()
    RESULT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class ServerLink:
    """Server-side link state machine. Feed bytes, act on events, write what methods
    return. After DONE, `trailing` holds bytes that followed the ticket."""

    def __init__(self, common_caps: Sequence[int] = SERVER_COMMON_CAPS) -> None:
        self.common_caps = tuple(caps_to_words(common_caps))
        self._state = _S.HEADER
        self._buf = bytearray()
        self._need = LINK_HEADER_SIZE
        self.mess: LinkMess | None = None
        self.mechanism = AuthMechanism.SPICE
        self.trailing = b""

    @property
    def done(self) -> bool:
        return self._state is _S.DONE

    @property
    def mini_header(self) -> bool:
        """Mini header iff both sides advertised it (the default server caps do)."""
        return (
            self.mess is not None
            and self.mess.has_common(CommonCap.MINI_HEADER)
            and has_cap(self.common_caps, CommonCap.MINI_HEADER)
        )

    @property
    def peer_lz4(self) -> bool:
        """The client advertised DATA_COMPRESS_LZ4 on a VMC channel: it takes
        COMPRESSED_DATA (subject to `should_compress`)."""
        return (
            self.mess is not None
            and self.mess.channel_type in VMC_CHANNEL_TYPES
            and self.mess.has_channel(VmcCap.DATA_COMPRESS_LZ4)
        )

    @property
    def expects_mechanism(self) -> bool:
        """A u32 auth mechanism precedes the ticket: both sides set AUTH_SELECTION."""
        return (
            self.mess is not None
            and self.mess.has_common(CommonCap.PROTOCOL_AUTH_SELECTION)
            and has_cap(self.common_caps, CommonCap.PROTOCOL_AUTH_SELECTION)
        )

    def _fail(self, code: LinkError, reason: str, reply: bool = True) -> LinkFailed:
        self._state = _S.FAILED
        self._buf.clear()
        data = error_reply(code) if reply else b""
        return LinkFailed(code, data, reason)

    def feed(self, data: bytes | bytearray | memoryview) -> list[LinkEvent]:
        """Consume bytes (any chunking); return the events they complete. Never raises
        on bad input: a failure is a `LinkFailed` carrying the bytes to send."""
        if self._state in (_S.DONE, _S.FAILED):
            if self._state is _S.DONE:
                self.trailing += bytes(data)
            return []
        self._buf += data
        if self._state is _S.HEADER and not _magic_ok(self._buf):
            # spice-server reads the 4 magic bytes alone: refuse without waiting for 16
            return [self._fail(LinkError.INVALID_MAGIC, f"bad magic {bytes(self._buf[:4])!r}")]
        events: list[LinkEvent] = []
        while len(self._buf) >= self._need and self._state not in (_S.DECIDE, _S.RESULT):
            chunk = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            ev = self._step(chunk)
            if ev is not None:
                events.append(ev)
                if isinstance(ev, LinkFailed):
                    break
        return events

    def _step(self, chunk: bytes) -> LinkEvent | None:
        if self._state is _S.HEADER:
            hdr = LinkHeader.decode(chunk)
            if hdr.magic != MAGIC:
                return self._fail(LinkError.INVALID_MAGIC, f"bad magic {hdr.magic!r}")
            if hdr.major != VERSION_MAJOR:
                return self._fail(LinkError.VERSION_MISMATCH, f"protocol {hdr.major}.{hdr.minor}")
            if hdr.size < LINK_MESS_SIZE or hdr.size > MAX_LINK_SIZE:
                return self._fail(LinkError.INVALID_DATA, f"link message size {hdr.size}")
            self._state, self._need = _S.BODY, hdr.size
            return None
        if self._state is _S.BODY:
            try:
                self.mess = LinkMess.decode(chunk)
            except LinkProtocolError as e:
                return self._fail(e.code, str(e))
            self._state, self._need = _S.DECIDE, 0
            return LinkRequest(self.mess)
        if self._state is _S.MECHANISM:
            (mech,) = _U32.unpack(chunk)
            if mech != AuthMechanism.SPICE:
                self._state = _S.FAILED
                return LinkFailed(
                    LinkError.INVALID_DATA,
                    encode_result(LinkError.INVALID_DATA),
                    f"unsupported auth mechanism {mech}",
                )
            self._state, self._need = _S.TICKET, TICKET_SIZE
            return None
        if self._state is _S.TICKET:
            self._state, self._need = _S.RESULT, 0
            return TicketReceived(chunk, self.mechanism)
        raise AssertionError(f"unexpected state {self._state}")  # pragma: no cover

    def accept(self, public_key: bytes, channel_caps: Sequence[int] = ()) -> bytes:
        """The OK reply (with `channel_caps` as cap numbers); then expect the ticket."""
        if self._state is not _S.DECIDE or self.mess is None:
            raise RuntimeError("accept() is only valid after LinkRequest")
        reply = LinkReply(
            LinkError.OK, public_key, self.common_caps, tuple(caps_to_words(channel_caps))
        )
        if self.expects_mechanism:
            self._state, self._need = _S.MECHANISM, 4
        else:
            self._state, self._need = _S.TICKET, TICKET_SIZE
        return encode_reply(reply)

    def refuse(self, code: LinkError) -> bytes:
        """The error reply for `code` (instead of `accept()`); then close."""
        if self._state is not _S.DECIDE:
            raise RuntimeError("refuse() is only valid after LinkRequest")
        self._state = _S.FAILED
        self._buf.clear()
        return error_reply(code)

    def pending_events(self) -> list[LinkEvent]:
        """Events completed by bytes buffered before `accept()` (call after accept)."""
        return self.feed(b"")

    def result(self, code: LinkError) -> bytes:
        """The u32 link result. OK finishes the link; anything else fails it."""
        if self._state is not _S.RESULT:
            raise RuntimeError("result() is only valid after TicketReceived")
        if code == LinkError.OK:
            self._state = _S.DONE
            self.trailing = bytes(self._buf)
        else:
            self._state = _S.FAILED
        self._buf.clear()
        return encode_result(code)


class ClientLink:
    """Client-side link state machine.

    `initiate()` gives the header + SpiceLinkMess. Feed the server's bytes: on the OK
    reply the mechanism (when both sides set AUTH_SELECTION) and the encrypted ticket are
    queued (`data_to_send()`); the u32 result gives `Linked` or `LinkFailed`.
    """

    def __init__(
        self,
        connection_id: int,
        channel_type: int,
        channel_id: int,
        channel_caps: Sequence[int] = (),
        password: str | bytes | None = None,
        common_caps: Sequence[int] = CLIENT_COMMON_CAPS,
    ) -> None:
        """`channel_caps`/`common_caps` are capability numbers. Raise `ValueError` for a
        password over 60 bytes or with a NUL (spice-gtk refuses it locally too)."""
        check_password(password)
        self.mess = LinkMess(
            connection_id,
            channel_type,
            channel_id,
            tuple(caps_to_words(common_caps)),
            tuple(caps_to_words(channel_caps)),
        )
        self.password = password
        self.reply: LinkReply | None = None
        self.trailing = b""
        self._state = _S.HEADER
        self._buf = bytearray()
        self._need = LINK_HEADER_SIZE
        self._out = bytearray()

    def initiate(self) -> bytes:
        """The SpiceLinkHeader + SpiceLinkMess to write first."""
        body = self.mess.encode()
        return LinkHeader(len(body)).encode() + body

    def data_to_send(self) -> bytes:
        """Bytes the machine wants written, emptied by this call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def done(self) -> bool:
        return self._state is _S.DONE

    @property
    def mini_header(self) -> bool:
        """Mini header iff both advertised it."""
        return (
            self.reply is not None
            and self.reply.has_common(CommonCap.MINI_HEADER)
            and self.mess.has_common(CommonCap.MINI_HEADER)
        )

    @property
    def peer_lz4(self) -> bool:
        """The server advertised DATA_COMPRESS_LZ4 on this VMC channel."""
        return (
            self.reply is not None
            and self.mess.channel_type in VMC_CHANNEL_TYPES
            and self.reply.has_channel(VmcCap.DATA_COMPRESS_LZ4)
        )

    def _fail(self, code: LinkError, reason: str) -> LinkFailed:
        self._state = _S.FAILED
        return LinkFailed(code, b"", reason)

    def feed(self, data: bytes | bytearray | memoryview) -> list[LinkEvent]:
        """Consume the server's bytes (any chunking); return the events they complete,
        then write `data_to_send()`. Never raises on bad input (`LinkFailed` instead)."""
        if self._state is _S.DONE:
            self.trailing += bytes(data)
            return []
        if self._state is _S.FAILED:
            return []
        self._buf += data
        events: list[LinkEvent] = []
        while len(self._buf) >= self._need and self._state not in (_S.DONE, _S.FAILED):
            chunk = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            ev = self._step(chunk)
            if ev is not None:
                events.append(ev)
        if self.done:
            self.trailing = bytes(self._buf)
            self._buf.clear()
        return events

    def _step(self, chunk: bytes) -> LinkEvent | None:
        if self._state is _S.HEADER:
            hdr = LinkHeader.decode(chunk)
            if hdr.magic != MAGIC:
                return self._fail(LinkError.INVALID_MAGIC, f"bad magic {hdr.magic!r}")
            if hdr.major != VERSION_MAJOR:
                return self._fail(LinkError.VERSION_MISMATCH, f"server protocol {hdr.major}")
            if hdr.size < 4 or hdr.size > MAX_LINK_SIZE:
                return self._fail(LinkError.INVALID_DATA, f"link reply size {hdr.size}")
            self._state, self._need = _S.BODY, hdr.size
            return None
        if self._state is _S.BODY:
            try:
                reply = LinkReply.decode(chunk)
            except LinkProtocolError as e:
                return self._fail(e.code, str(e))
            if reply.error != LinkError.OK:
                try:
                    code = LinkError(reply.error)
                except ValueError:
                    code = LinkError.ERROR
                return self._fail(code, f"server refused the link: {code.name}")
            self.reply = reply
            both_select = reply.has_common(
                CommonCap.PROTOCOL_AUTH_SELECTION
            ) and self.mess.has_common(CommonCap.PROTOCOL_AUTH_SELECTION)
            if both_select and not reply.has_common(CommonCap.AUTH_SPICE):
                return self._fail(LinkError.INVALID_DATA, "no compatible auth mechanism")
            try:
                ticket = encrypt_ticket(reply.pub_key, self.password)
            except LinkProtocolError as e:
                return self._fail(e.code, str(e))  # nothing queued: a failure sends nothing
            if both_select:
                self._out += _U32.pack(AuthMechanism.SPICE)
            self._out += ticket
            self._state, self._need = _S.RESULT, 4
            return LinkReplyReceived(reply)
        if self._state is _S.RESULT:
            (code,) = _U32.unpack(chunk)
            if code != LinkError.OK:
                try:
                    err = LinkError(code)
                except ValueError:
                    err = LinkError.ERROR
                return self._fail(err, f"link result {err.name}")
            self._state = _S.DONE
            assert self.reply is not None
            return Linked(
                self.mini_header, self.reply.common_caps, self.reply.channel_caps, self.peer_lz4
            )
        raise AssertionError(f"unexpected state {self._state}")  # pragma: no cover
