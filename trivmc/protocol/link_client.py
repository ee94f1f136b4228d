"""The client side of the link handshake, sans-IO.

`initiate()` gives the header + SpiceLinkMess to write first. Feed the server's bytes:
the OK reply gives `LinkReplyReceived`, whose `data` (the auth mechanism when both sides
set AUTH_SELECTION, then the encrypted ticket) is to be written; the u32 result gives
`Linked` or `LinkFailed`. Bytes fed after the result are kept in `trailing`.

Bytes to write come only as return values (`initiate`) and as event `data`. Never
raises on bad peer input: every failure is a `LinkFailed` (with nothing to send).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .constants import (
    MAGIC,
    VERSION_MAJOR,
    VMC_CHANNEL_TYPES,
    AuthMechanism,
    CommonCap,
    LinkError,
    VmcCap,
    caps_to_words,
)
from .errors import LinkProtocolError
from .link_codec import (
    CLIENT_COMMON_CAPS,
    LINK_HEADER_SIZE,
    MAX_LINK_SIZE,
    LinkHeader,
    LinkMess,
    LinkReply,
    decode_u32,
    encode_mechanism,
)
from .link_events import Linked, LinkEvent, LinkFailed, LinkReplyReceived
from .ticket import check_password, encrypt_ticket


class _S(enum.Enum):
    HEADER = enum.auto()
    BODY = enum.auto()
    RESULT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class ClientLink:
    """Client-side link state machine.

    `initiate()` gives the header + SpiceLinkMess. Feed the server's bytes: the OK
    reply gives `LinkReplyReceived` (write its `data`); the u32 result gives `Linked` or
    `LinkFailed`.
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

    def initiate(self) -> bytes:
        """The SpiceLinkHeader + SpiceLinkMess to write first."""
        body = self.mess.encode()
        return LinkHeader(len(body)).encode() + body

    @property
    def done(self) -> bool:
        """True once the link succeeded (the reply's result was OK)."""
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
        """Consume the server's bytes (any chunking); return the events they complete.
        Never raises on bad input (`LinkFailed` instead)."""
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
                return self._fail(e.code, str(e))  # a failure sends nothing
            mechanism = encode_mechanism(AuthMechanism.SPICE) if both_select else b""
            self._state, self._need = _S.RESULT, 4
            return LinkReplyReceived(reply, mechanism + ticket)
        if self._state is _S.RESULT:
            result = decode_u32(chunk)
            if result != LinkError.OK:
                try:
                    err = LinkError(result)
                except ValueError:
                    err = LinkError.ERROR
                return self._fail(err, f"link result {err.name}")
            self._state = _S.DONE
            assert self.reply is not None
            return Linked(
                self.mini_header, self.reply.common_caps, self.reply.channel_caps, self.peer_lz4
            )
        raise AssertionError(f"unexpected state {self._state}")  # pragma: no cover
