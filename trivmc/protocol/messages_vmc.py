"""Codecs of the spicevmc channel's messages: DATA, COMPRESSED_DATA, PORT_INIT,
PORT_EVENT and the MIGRATE_DATA body (SVMD), with the migration target's checks."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .constants import CompressionType, MsgVmc
from .errors import ProtocolError, TruncatedMessage
from .message_base import Body, unpack_fixed


@dataclass(frozen=True, slots=True)
class VmcData:
    """SPICEVMC_DATA (both directions): the body is the payload."""

    TYPE: ClassVar[int] = MsgVmc.DATA
    data: Body

    def encode(self) -> bytes:
        """The payload as bytes."""
        return bytes(self.data)

    @classmethod
    def decode(cls, body: Body) -> Self:
        """The body as the payload (not copied)."""
        return cls(body)


@dataclass(frozen=True, slots=True)
class VmcCompressedData:
    """SPICEVMC_COMPRESSED_DATA: u8 type, u32 uncompressed_size (absent for NONE), data."""

    TYPE: ClassVar[int] = MsgVmc.COMPRESSED_DATA
    _S: ClassVar[struct.Struct] = struct.Struct("<BI")
    compression: int
    uncompressed_size: int
    data: Body

    def encode(self) -> bytes:
        """The body (no size field for NONE)."""
        if self.compression == CompressionType.NONE:
            return bytes([self.compression]) + bytes(self.data)
        return self._S.pack(self.compression, self.uncompressed_size) + bytes(self.data)

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode (the data is a slice of `body`); raises `TruncatedMessage` when short."""
        if len(body) < 1:
            raise TruncatedMessage("COMPRESSED_DATA: empty body")
        if body[0] == CompressionType.NONE:
            return cls(CompressionType.NONE, len(body) - 1, body[1:])
        ctype, size = unpack_fixed(cls._S, body, "COMPRESSED_DATA")
        return cls(ctype, size, body[cls._S.size :])


@dataclass(frozen=True, slots=True)
class PortInit:
    """PORT_INIT: u32 name_size (with NUL), u32 name offset (9), u8 opened, name + NUL."""

    TYPE: ClassVar[int] = MsgVmc.PORT_INIT
    _S: ClassVar[struct.Struct] = struct.Struct("<IIB")
    name: bytes
    opened: bool

    def encode(self) -> bytes:
        """The body, the name NUL-terminated at offset 9."""
        return self._S.pack(len(self.name) + 1, self._S.size, int(self.opened)) + self.name + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` when the name lies outside the body."""
        size, offset, opened = unpack_fixed(cls._S, body, "PORT_INIT")
        if size < 1 or offset + size > len(body):
            raise TruncatedMessage(f"PORT_INIT: name of {size} bytes at {offset} truncated")
        return cls(bytes(body[offset : offset + size - 1]), bool(opened))


@dataclass(frozen=True, slots=True)
class PortEventMsg:
    """PORT_EVENT (both directions): one u8 event."""

    TYPE: ClassVar[int] = MsgVmc.PORT_EVENT
    event: int

    def encode(self) -> bytes:
        """The one-byte body."""
        return bytes([self.event])

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` on an empty body."""
        if len(body) < 1:
            raise TruncatedMessage("PORT_EVENT: empty body")
        return cls(body[0])


VMC_MIGRATE_MAGIC = b"SVMD"


@dataclass(frozen=True, slots=True)
class VmcMigrateDataHeader:
    """The spicevmc MIGRATE_DATA body header (SVMD v1, char-device v1)."""

    _S: ClassVar[struct.Struct] = struct.Struct("<4sIIBIIIII")
    connected: bool
    num_client_tokens: int
    num_send_tokens: int
    write_size: int
    write_num_client_tokens: int
    write_data_ptr: int = 33
    version: int = 1
    chardev_version: int = 1
    pending: bytes = field(default=b"")

    def encode(self) -> bytes:
        """The 33-byte header, then `pending`."""
        return (
            self._S.pack(
                VMC_MIGRATE_MAGIC,
                self.version,
                self.chardev_version,
                int(self.connected),
                self.num_client_tokens,
                self.num_send_tokens,
                self.write_size,
                self.write_num_client_tokens,
                self.write_data_ptr,
            )
            + self.pending
        )

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `ProtocolError` on a bad magic or a version above 1 and
        `TruncatedMessage` when short (`check_vmc_migrate_data` checks the rest)."""
        fields = unpack_fixed(cls._S, body, "MIGRATE_DATA")
        magic = bytes(fields[0])
        if magic != VMC_MIGRATE_MAGIC:
            raise ProtocolError(f"MIGRATE_DATA: bad magic {magic!r}")
        _, ver, cver, conn, ctok, stok, wsize, wtok, wptr = fields
        if ver > 1:
            raise ProtocolError(f"MIGRATE_DATA: version {ver} above 1")
        if wptr + wsize > len(body):
            raise TruncatedMessage("MIGRATE_DATA: pending data truncated")
        return cls(
            bool(conn), ctok, stok, wsize, wtok, wptr, ver, cver, bytes(body[wptr : wptr + wsize])
        )


SVMD_HEADER_SIZE = VmcMigrateDataHeader._S.size  #: 33: the pending data follows


def check_vmc_migrate_data(body: Body, max_write: int) -> VmcMigrateDataHeader:
    """A migration target's decode of a spicevmc MIGRATE_DATA body: every field checked
    before the pending data is copied. Raises `ProtocolError` (`TruncatedMessage` for a
    short body) naming what is wrong: the magic, a version above 1 (SVMD or char
    device), `connected` not 1, `write_size` above `max_write` (what a source's device
    may hold: its byte budget plus one message), a data offset inside the header, or
    an offset and size that do not end exactly where the body ends. The token counts
    are taken as they come (VMC clients have no flow control: nothing on the target
    depends on them)."""
    if len(body) < SVMD_HEADER_SIZE:
        raise TruncatedMessage(
            f"MIGRATE_DATA: {len(body)} bytes, the SVMD header alone is {SVMD_HEADER_SIZE}"
        )
    magic, ver, cver, conn, ctok, stok, wsize, wtok, wptr = VmcMigrateDataHeader._S.unpack_from(
        body
    )
    if magic != VMC_MIGRATE_MAGIC:
        raise ProtocolError(f"MIGRATE_DATA: bad magic {bytes(magic)!r}, expected b'SVMD'")
    if ver > 1:
        raise ProtocolError(f"MIGRATE_DATA: SVMD version {ver} above 1")
    if cver > 1:
        raise ProtocolError(f"MIGRATE_DATA: char-device version {cver} above 1")
    if conn != 1:
        raise ProtocolError(f"MIGRATE_DATA: connected is {conn}, expected 1")
    if wsize > max_write:
        raise ProtocolError(
            f"MIGRATE_DATA: write_size {wsize} above the bound {max_write} (what a"
            " source's device may hold: its byte budget plus one message)"
        )
    if wptr < SVMD_HEADER_SIZE:
        raise ProtocolError(
            f"MIGRATE_DATA: write_data_ptr {wptr} points inside the {SVMD_HEADER_SIZE}-byte header"
        )
    if wptr + wsize != len(body):
        raise ProtocolError(
            f"MIGRATE_DATA: write_data_ptr {wptr} + write_size {wsize} does not end the"
            f" {len(body)}-byte body"
        )
    pending = bytes(body[wptr:])
    return VmcMigrateDataHeader(True, ctok, stok, wsize, wtok, wptr, ver, cver, pending)
