"""The link handshake's wire structs: SpiceLinkHeader, SpiceLinkMess, SpiceLinkReply
(encode/decode) and the u32 words around them (auth mechanism, link result).

Decoders raise only `TruncatedMessage` or `LinkProtocolError` on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from .constants import (
    MAGIC,
    PUBKEY_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    AuthMechanism,
    CommonCap,
    LinkError,
    has_cap,
)
from .errors import LinkProtocolError, TruncatedMessage

_HEADER = struct.Struct("<4sIII")
_MESS = struct.Struct("<IBBIII")
_REPLY_HEAD = struct.Struct("<I")
_REPLY_TAIL = struct.Struct("<III")
_U32 = struct.Struct("<I")

LINK_HEADER_SIZE = _HEADER.size  #: 16: SpiceLinkHeader
LINK_MESS_SIZE = _MESS.size  #: 18: SpiceLinkMess without its capability words
LINK_REPLY_SIZE = 4 + PUBKEY_SIZE + _REPLY_TAIL.size  #: 178: SpiceLinkReply without its words
MAX_LINK_SIZE = 4096  #: the largest link message accepted (the header's size field)
MAX_CAPS_WORDS = 1024

#: The common capabilities trivmc's server advertises.
SERVER_COMMON_CAPS = (
    CommonCap.PROTOCOL_AUTH_SELECTION,
    CommonCap.AUTH_SPICE,
    CommonCap.MINI_HEADER,
)
CLIENT_COMMON_CAPS = SERVER_COMMON_CAPS  #: those trivmc's client advertises


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """SpiceLinkHeader: "REDQ", major, minor, size of what follows."""

    size: int
    major: int = VERSION_MAJOR
    minor: int = VERSION_MINOR
    magic: bytes = MAGIC

    def encode(self) -> bytes:
        """The 16 header bytes."""
        return _HEADER.pack(self.magic, self.major, self.minor, self.size)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode the first 16 bytes (magic unchecked); raises `TruncatedMessage` when short."""
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
        """The SpiceLinkMess bytes with its capability words (after the link header)."""
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
        """True when common capability `cap` is set."""
        return has_cap(self.common_caps, cap)

    def has_channel(self, cap: int) -> bool:
        """True when channel capability `cap` is set."""
        return has_cap(self.channel_caps, cap)


@dataclass(frozen=True, slots=True)
class LinkReply:
    """SpiceLinkReply: error, the 162-byte public key, capability words."""

    error: int
    pub_key: bytes = bytes(PUBKEY_SIZE)
    common_caps: tuple[int, ...] = ()
    channel_caps: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """The SpiceLinkReply bytes; raises ValueError when `pub_key` is not 162 bytes."""
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
        """Decode a reply (a short one carrying an error code is accepted); raises
        `LinkProtocolError(INVALID_DATA)` on bad sizes or capability bounds."""
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
        """True when common capability `cap` is set."""
        return has_cap(self.common_caps, cap)

    def has_channel(self, cap: int) -> bool:
        """True when channel capability `cap` is set."""
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


def encode_mechanism(mechanism: AuthMechanism) -> bytes:
    """The u32 auth mechanism the client sends before the ticket (AUTH_SELECTION)."""
    return _U32.pack(mechanism)


def decode_u32(data: bytes | bytearray | memoryview) -> int:
    """A little-endian u32 (the mechanism or the link result); `data` is 4 bytes."""
    (value,) = _U32.unpack(data)
    return int(value)


def magic_ok(buf: bytes | bytearray) -> bool:
    """False once 4 bytes are in and they are not "REDQ" (spice-server reads the magic
    alone; a caller sniffing for WebSocket sees "GET " complete first)."""
    return len(buf) < 4 or buf[:4] == MAGIC
