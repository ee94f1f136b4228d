"""The server side of the link handshake, sans-IO.

In spice-server's order (spec section 1.8): header (magic, major, size bounds) ->
SpiceLinkMess (caps bounds) -> `LinkRequest`; the caller answers `accept(public_key,
channel_caps)` or `refuse(code)`; then the auth mechanism (only when both sides set
AUTH_SELECTION) and the 128-byte ticket -> `TicketReceived`; the caller answers
`result(code)`. Bytes fed after the ticket are kept in `trailing`.

Bytes to write come only as return values (`accept`, `refuse`, `result`) and as
`LinkFailed.data`. Never raises on bad peer input: every failure is a `LinkFailed`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .constants import (
    MAGIC,
    TICKET_SIZE,
    VERSION_MAJOR,
    VMC_CHANNEL_TYPES,
    AuthMechanism,
    CommonCap,
    LinkError,
    VmcCap,
    caps_to_words,
    has_cap,
)
from .errors import LinkProtocolError
from .link_codec import (
    LINK_HEADER_SIZE,
    LINK_MESS_SIZE,
    MAX_LINK_SIZE,
    SERVER_COMMON_CAPS,
    LinkHeader,
    LinkMess,
    LinkReply,
    decode_u32,
    encode_reply,
    encode_result,
    error_reply,
    magic_ok,
)
from .link_events import LinkEvent, LinkFailed, LinkRequest, TicketReceived


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
        """True once the link succeeded and the result was sent."""
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
        on bad input: a failure is a `LinkFailed` carrying the bytes to send.

        Bytes that arrive before `accept()` stay buffered: after `accept()`, `feed(b"")`
        returns the events they complete."""
        if self._state in (_S.DONE, _S.FAILED):
            if self._state is _S.DONE:
                self.trailing += bytes(data)
            return []
        self._buf += data
        if self._state is _S.HEADER and not magic_ok(self._buf):
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
            mech = decode_u32(chunk)
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
