"""Message body codecs: `encode() -> bytes` and `decode(body) -> message`.

`decode` raises `TruncatedMessage` on a body shorter than the fixed layout and ignores
trailing bytes, as spice-server does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar, Self
from uuid import UUID

from .constants import (
    CompressionType,
    MainCap,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgMain,
    MsgVmc,
    has_cap,
)
from .errors import ProtocolError, TruncatedMessage

Body = bytes | bytearray | memoryview


def _unpack(fmt: struct.Struct, body: Body, name: str) -> tuple[int, ...]:
    if len(body) < fmt.size:
        raise TruncatedMessage(f"{name}: body of {len(body)} bytes, need {fmt.size}")
    return fmt.unpack_from(body, 0)


class _Fixed:
    """A message whose body is exactly one struct of its dataclass fields, in order."""

    __slots__ = ()
    _S: ClassVar[struct.Struct]

    def encode(self) -> bytes:
        return self._S.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def decode(cls, body: Body) -> Self:
        return cls(*_unpack(cls._S, body, cls.__name__))


@dataclass(frozen=True, slots=True)
class SetAck(_Fixed):
    TYPE: ClassVar[int] = MsgCommon.SET_ACK
    _S: ClassVar[struct.Struct] = struct.Struct("<II")
    generation: int
    window: int


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = MsgCommon.PING
    _S: ClassVar[struct.Struct] = struct.Struct("<IQ")
    id: int
    timestamp: int
    padding: int = 0  # number of zero bytes after the fixed part

    def encode(self) -> bytes:
        return self._S.pack(self.id, self.timestamp) + bytes(self.padding)

    @classmethod
    def decode(cls, body: Body) -> Self:
        pid, ts = _unpack(cls._S, body, "PING")
        return cls(pid, ts, len(body) - cls._S.size)


@dataclass(frozen=True, slots=True)
class Pong(_Fixed):
    TYPE: ClassVar[int] = MsgcCommon.PONG
    _S: ClassVar[struct.Struct] = struct.Struct("<IQ")
    id: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AckSync(_Fixed):
    TYPE: ClassVar[int] = MsgcCommon.ACK_SYNC
    _S: ClassVar[struct.Struct] = struct.Struct("<I")
    generation: int


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[int] = MsgcCommon.ACK

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: Body) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Notify:
    TYPE: ClassVar[int] = MsgCommon.NOTIFY
    _S: ClassVar[struct.Struct] = struct.Struct("<QIIII")
    time_stamp: int
    severity: int
    visibility: int
    what: int
    message: bytes

    def encode(self) -> bytes:
        head = self._S.pack(
            self.time_stamp, self.severity, self.visibility, self.what, len(self.message)
        )
        return head + self.message + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        ts, sev, vis, what, n = _unpack(cls._S, body, "NOTIFY")
        end = cls._S.size + n
        if len(body) < end:
            raise TruncatedMessage(f"NOTIFY: message of {n} bytes truncated")
        return cls(ts, sev, vis, what, bytes(body[cls._S.size : end]))


@dataclass(frozen=True, slots=True)
class Disconnecting(_Fixed):
    """DISCONNECTING, the same layout in both directions."""

    TYPE: ClassVar[int] = MsgCommon.DISCONNECTING
    _S: ClassVar[struct.Struct] = struct.Struct("<QI")
    time_stamp: int
    reason: int


@dataclass(frozen=True, slots=True)
class WaitForChannel:
    channel_type: int
    channel_id: int
    message_serial: int


@dataclass(frozen=True, slots=True)
class WaitForChannels:
    TYPE: ClassVar[int] = MsgCommon.WAIT_FOR_CHANNELS
    _ITEM: ClassVar[struct.Struct] = struct.Struct("<BBQ")
    channels: tuple[WaitForChannel, ...]

    def encode(self) -> bytes:
        parts = [bytes([len(self.channels)])]
        parts += [
            self._ITEM.pack(c.channel_type, c.channel_id, c.message_serial) for c in self.channels
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, body: Body) -> Self:
        if len(body) < 1:
            raise TruncatedMessage("WAIT_FOR_CHANNELS: empty body")
        count = body[0]
        if len(body) < 1 + count * cls._ITEM.size:
            raise TruncatedMessage(f"WAIT_FOR_CHANNELS: {count} entries truncated")
        items = tuple(
            WaitForChannel(*cls._ITEM.unpack_from(body, 1 + i * cls._ITEM.size))
            for i in range(count)
        )
        return cls(items)


@dataclass(frozen=True, slots=True)
class MainInit(_Fixed):
    TYPE: ClassVar[int] = MsgMain.INIT
    _S: ClassVar[struct.Struct] = struct.Struct("<8I")
    session_id: int
    display_channels_hint: int = 0
    supported_mouse_modes: int = 1
    current_mouse_mode: int = 1
    agent_connected: int = 0
    agent_tokens: int = 10
    multi_media_time: int = 0
    ram_hint: int = 0


@dataclass(frozen=True, slots=True)
class MainMouseMode(_Fixed):
    """MAIN_MOUSE_MODE: u16 supported modes, u16 current mode (1 SERVER, 2 CLIENT)."""

    TYPE: ClassVar[int] = MsgMain.MOUSE_MODE
    _S: ClassVar[struct.Struct] = struct.Struct("<HH")
    supported_modes: int = 1
    current_mode: int = 1


@dataclass(frozen=True, slots=True)
class MainMouseModeRequest(_Fixed):
    """Client MAIN_MOUSE_MODE_REQUEST: u16 mode."""

    TYPE: ClassVar[int] = MsgcMain.MOUSE_MODE_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct("<H")
    mode: int


@dataclass(frozen=True, slots=True)
class MainUuid(_Fixed):
    """MAIN_UUID: the 16 bytes of the UUID in RFC 4122 (big-endian) order, as QEMU
    hands them to spice-server and spice-gtk prints them."""

    TYPE: ClassVar[int] = MsgMain.UUID
    _S: ClassVar[struct.Struct] = struct.Struct("<16s")
    uuid: bytes

    @classmethod
    def of(cls, value: UUID) -> Self:
        return cls(value.bytes)

    def as_uuid(self) -> UUID:
        return UUID(bytes=self.uuid)


@dataclass(frozen=True, slots=True)
class MainAttachChannels:
    TYPE: ClassVar[int] = MsgcMain.ATTACH_CHANNELS

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: Body) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class MainChannelsList:
    TYPE: ClassVar[int] = MsgMain.CHANNELS_LIST
    channels: tuple[tuple[int, int], ...]  # (type, id)

    def encode(self) -> bytes:
        return struct.pack("<I", len(self.channels)) + b"".join(
            bytes((t, i)) for t, i in self.channels
        )

    @classmethod
    def decode(cls, body: Body) -> Self:
        if len(body) < 4:
            raise TruncatedMessage("CHANNELS_LIST: body shorter than 4")
        (count,) = struct.unpack_from("<I", body, 0)
        if len(body) < 4 + 2 * count:
            raise TruncatedMessage(f"CHANNELS_LIST: {count} entries truncated")
        return cls(tuple((body[4 + 2 * i], body[5 + 2 * i]) for i in range(count)))


@dataclass(frozen=True, slots=True)
class MainName:
    TYPE: ClassVar[int] = MsgMain.NAME
    name: bytes  # without the NUL

    def encode(self) -> bytes:
        return struct.pack("<I", len(self.name) + 1) + self.name + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        if len(body) < 4:
            raise TruncatedMessage("NAME: body shorter than 4")
        (n,) = struct.unpack_from("<I", body, 0)
        if n < 1 or len(body) < 4 + n:
            raise TruncatedMessage(f"NAME: name of {n} bytes truncated")
        return cls(bytes(body[4 : 4 + n - 1]))

    @property
    def text(self) -> str:
        """The name as text (UTF-8; undecodable bytes replaced), up to a first NUL."""
        return self.name.split(b"\0", 1)[0].decode("utf-8", "replace")


def name_and_uuid(
    client_caps: Sequence[int], name: str | None, uuid: UUID | None
) -> list[tuple[int, bytes]]:
    """What spice-server sends right after MAIN_INIT, as (type, body): MAIN_NAME and
    MAIN_UUID, only to a client whose main channel caps have NAME_AND_UUID, each only
    when it is set. `client_caps` are the capability words of the client's link."""
    if not has_cap(client_caps, MainCap.NAME_AND_UUID):
        return []
    out: list[tuple[int, bytes]] = []
    if name is not None:
        out.append((MsgMain.NAME, MainName(name.encode()).encode()))
    if uuid is not None:
        out.append((MsgMain.UUID, MainUuid.of(uuid).encode()))
    return out


@dataclass(frozen=True, slots=True)
class VmcData:
    """SPICEVMC_DATA (both directions): the body is the payload."""

    TYPE: ClassVar[int] = MsgVmc.DATA
    data: Body

    def encode(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def decode(cls, body: Body) -> Self:
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
        if self.compression == CompressionType.NONE:
            return bytes([self.compression]) + bytes(self.data)
        return self._S.pack(self.compression, self.uncompressed_size) + bytes(self.data)

    @classmethod
    def decode(cls, body: Body) -> Self:
        if len(body) < 1:
            raise TruncatedMessage("COMPRESSED_DATA: empty body")
        if body[0] == CompressionType.NONE:
            return cls(CompressionType.NONE, len(body) - 1, body[1:])
        ctype, size = _unpack(cls._S, body, "COMPRESSED_DATA")
        return cls(ctype, size, body[cls._S.size :])


@dataclass(frozen=True, slots=True)
class PortInit:
    """PORT_INIT: u32 name_size (with NUL), u32 name offset (9), u8 opened, name + NUL."""

    TYPE: ClassVar[int] = MsgVmc.PORT_INIT
    _S: ClassVar[struct.Struct] = struct.Struct("<IIB")
    name: bytes
    opened: bool

    def encode(self) -> bytes:
        return self._S.pack(len(self.name) + 1, self._S.size, int(self.opened)) + self.name + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        size, offset, opened = _unpack(cls._S, body, "PORT_INIT")
        if size < 1 or offset + size > len(body):
            raise TruncatedMessage(f"PORT_INIT: name of {size} bytes at {offset} truncated")
        return cls(bytes(body[offset : offset + size - 1]), bool(opened))


@dataclass(frozen=True, slots=True)
class PortEventMsg:
    """PORT_EVENT (both directions): one u8 event."""

    TYPE: ClassVar[int] = MsgVmc.PORT_EVENT
    event: int

    def encode(self) -> bytes:
        return bytes([self.event])

    @classmethod
    def decode(cls, body: Body) -> Self:
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
        fields = _unpack(cls._S, body, "MIGRATE_DATA")
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
