"""Codecs of the main channel's messages: MAIN_INIT, mouse mode, MAIN_UUID, MAIN_NAME,
ATTACH_CHANNELS, CHANNELS_LIST, and what follows MAIN_INIT (`name_and_uuid`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self
from uuid import UUID

from .constants import MainCap, MsgcMain, MsgMain, has_cap
from .errors import TruncatedMessage
from .message_base import Body, FixedLayout


@dataclass(frozen=True, slots=True)
class MainInit(FixedLayout):
    """MAIN_INIT: the session id and seven u32 hints the server sends first."""

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
class MainMouseMode(FixedLayout):
    """MAIN_MOUSE_MODE: u16 supported modes, u16 current mode (1 SERVER, 2 CLIENT)."""

    TYPE: ClassVar[int] = MsgMain.MOUSE_MODE
    _S: ClassVar[struct.Struct] = struct.Struct("<HH")
    supported_modes: int = 1
    current_mode: int = 1


@dataclass(frozen=True, slots=True)
class MainMouseModeRequest(FixedLayout):
    """Client MAIN_MOUSE_MODE_REQUEST: u16 mode."""

    TYPE: ClassVar[int] = MsgcMain.MOUSE_MODE_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct("<H")
    mode: int


@dataclass(frozen=True, slots=True)
class MainUuid(FixedLayout):
    """MAIN_UUID: the 16 bytes of the UUID in RFC 4122 (big-endian) order, as QEMU
    hands them to spice-server and spice-gtk prints them."""

    TYPE: ClassVar[int] = MsgMain.UUID
    _S: ClassVar[struct.Struct] = struct.Struct("<16s")
    uuid: bytes

    @classmethod
    def of(cls, value: UUID) -> Self:
        """The message carrying `value`."""
        return cls(value.bytes)

    def as_uuid(self) -> UUID:
        """The carried UUID."""
        return UUID(bytes=self.uuid)


@dataclass(frozen=True, slots=True)
class MainAttachChannels:
    """ATTACH_CHANNELS: the client asks for the channel list (empty body)."""

    TYPE: ClassVar[int] = MsgcMain.ATTACH_CHANNELS

    def encode(self) -> bytes:
        """The empty body."""
        return b""

    @classmethod
    def decode(cls, body: Body) -> Self:
        """A MainAttachChannels; any body is accepted."""
        return cls()


@dataclass(frozen=True, slots=True)
class MainChannelsList:
    """CHANNELS_LIST: u32 count, then (u8 type, u8 id) per channel."""

    TYPE: ClassVar[int] = MsgMain.CHANNELS_LIST
    channels: tuple[tuple[int, int], ...]  # (type, id)

    def encode(self) -> bytes:
        """The count and the pairs."""
        return struct.pack("<I", len(self.channels)) + b"".join(
            bytes((t, i)) for t, i in self.channels
        )

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` when the list is short."""
        if len(body) < 4:
            raise TruncatedMessage("CHANNELS_LIST: body shorter than 4")
        (count,) = struct.unpack_from("<I", body, 0)
        if len(body) < 4 + 2 * count:
            raise TruncatedMessage(f"CHANNELS_LIST: {count} entries truncated")
        return cls(tuple((body[4 + 2 * i], body[5 + 2 * i]) for i in range(count)))


@dataclass(frozen=True, slots=True)
class MainName:
    """MAIN_NAME: u32 size (with the NUL), the VM's name and a NUL."""

    TYPE: ClassVar[int] = MsgMain.NAME
    name: bytes  # without the NUL

    def encode(self) -> bytes:
        """The size, the name and its NUL."""
        return struct.pack("<I", len(self.name) + 1) + self.name + b"\0"

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `TruncatedMessage` when the name is short or its size is 0."""
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
