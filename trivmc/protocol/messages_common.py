"""Codecs of the messages every channel has (spice's common.proto): MIGRATE, SET_ACK,
PING, PONG, ACK_SYNC, ACK, NOTIFY, DISCONNECTING, WAIT_FOR_CHANNELS."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from .constants import MsgcCommon, MsgCommon
from .errors import TruncatedMessage
from .message_base import Body, FixedLayout, unpack_fixed


@dataclass(frozen=True, slots=True)
class Migrate(FixedLayout):
    """SPICE_MSG_MIGRATE: u32 flags (`MigrateFlags`)."""

    TYPE: ClassVar[int] = MsgCommon.MIGRATE
    _S: ClassVar[struct.Struct] = struct.Struct("<I")
    flags: int


@dataclass(frozen=True, slots=True)
class SetAck(FixedLayout):
    """SET_ACK: u32 generation, u32 window (messages between ACKs)."""

    TYPE: ClassVar[int] = MsgCommon.SET_ACK
    _S: ClassVar[struct.Struct] = struct.Struct("<II")
    generation: int
    window: int


@dataclass(frozen=True, slots=True)
class Ping:
    """PING: u32 id, u64 timestamp, then `padding` zero bytes."""

    TYPE: ClassVar[int] = MsgCommon.PING
    _S: ClassVar[struct.Struct] = struct.Struct("<IQ")
    id: int
    timestamp: int
    padding: int = 0  # number of zero bytes after the fixed part

    def encode(self) -> bytes:
        """The body, padding included."""
        return self._S.pack(self.id, self.timestamp) + bytes(self.padding)

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; trailing bytes count as padding; raises `TruncatedMessage` when short."""
        pid, ts = unpack_fixed(cls._S, body, "PING")
        return cls(pid, ts, len(body) - cls._S.size)


@dataclass(frozen=True, slots=True)
class Pong(FixedLayout):
    """PONG: the id and timestamp of the PING it answers."""

    TYPE: ClassVar[int] = MsgcCommon.PONG
    _S: ClassVar[struct.Struct] = struct.Struct("<IQ")
    id: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AckSync(FixedLayout):
    """ACK_SYNC: u32 generation, the client's answer to SET_ACK."""

    TYPE: ClassVar[int] = MsgcCommon.ACK_SYNC
    _S: ClassVar[struct.Struct] = struct.Struct("<I")
    generation: int


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK: an empty body, one per window of messages received."""

    TYPE: ClassVar[int] = MsgcCommon.ACK

    def encode(self) -> bytes:
        """The empty body."""
        return b""

    @classmethod
    def decode(cls, body: Body) -> Self:
        """An Ack; any body is accepted."""
        return cls()


@dataclass(frozen=True, slots=True)
class Notify:
    """NOTIFY: timestamp, severity, visibility, what, then the message and a NUL."""

    TYPE: ClassVar[int] = MsgCommon.NOTIFY
    _S: ClassVar[struct.Struct] = struct.Struct("<QIIII")
    time_stamp: int
    severity: int
    visibility: int
    what: int
    message: bytes

    def encode(self) -> bytes:
        """The body, the message NUL-terminated."""
        head = self._S.pack(
            self.time_stamp, self.severity, self.visibility, self.what, len(self.message)
        )
        return head + self.message + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` when the body or the message is short."""
        ts, sev, vis, what, n = unpack_fixed(cls._S, body, "NOTIFY")
        end = cls._S.size + n
        if len(body) < end:
            raise TruncatedMessage(f"NOTIFY: message of {n} bytes truncated")
        return cls(ts, sev, vis, what, bytes(body[cls._S.size : end]))


@dataclass(frozen=True, slots=True)
class Disconnecting(FixedLayout):
    """DISCONNECTING, the same layout in both directions."""

    TYPE: ClassVar[int] = MsgCommon.DISCONNECTING
    _S: ClassVar[struct.Struct] = struct.Struct("<QI")
    time_stamp: int
    reason: int


@dataclass(frozen=True, slots=True)
class WaitForChannel:
    """One entry of WAIT_FOR_CHANNELS: a channel and the serial to wait for."""

    channel_type: int
    channel_id: int
    message_serial: int


@dataclass(frozen=True, slots=True)
class WaitForChannels:
    """WAIT_FOR_CHANNELS: u8 count, then `WaitForChannel` entries."""

    TYPE: ClassVar[int] = MsgCommon.WAIT_FOR_CHANNELS
    _ITEM: ClassVar[struct.Struct] = struct.Struct("<BBQ")
    channels: tuple[WaitForChannel, ...]

    def encode(self) -> bytes:
        """The count and the entries."""
        parts = [bytes([len(self.channels)])]
        parts += [
            self._ITEM.pack(c.channel_type, c.channel_id, c.message_serial) for c in self.channels
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` when the entries are short."""
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
