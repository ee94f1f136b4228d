"""Message body codecs: `encode() -> bytes` and `decode(body) -> message`.

`decode` raises `TruncatedMessage` on a body shorter than the fixed layout and ignores
trailing bytes, as spice-server does. The codecs live by channel: `messages_common.py`
(every channel), `messages_main.py` (the main channel), `messages_vmc.py` (spicevmc and
port channels), on the shared base in `message_base.py`; this module gathers them (the
import path `trivmc.protocol.messages` stays).
"""

from __future__ import annotations

from .message_base import Body, FixedLayout, unpack_fixed
from .messages_common import (
    Ack,
    AckSync,
    Disconnecting,
    Migrate,
    Notify,
    Ping,
    Pong,
    SetAck,
    WaitForChannel,
    WaitForChannels,
)
from .messages_main import (
    MainAttachChannels,
    MainChannelsList,
    MainInit,
    MainMouseMode,
    MainMouseModeRequest,
    MainName,
    MainUuid,
    name_and_uuid,
)
from .messages_vmc import (
    SVMD_HEADER_SIZE,
    VMC_MIGRATE_MAGIC,
    PortEventMsg,
    PortInit,
    VmcCompressedData,
    VmcData,
    VmcMigrateDataHeader,
    check_vmc_migrate_data,
)

__all__ = [
    "SVMD_HEADER_SIZE",
    "VMC_MIGRATE_MAGIC",
    "Ack",
    "AckSync",
    "Body",
    "Disconnecting",
    "FixedLayout",
    "MainAttachChannels",
    "MainChannelsList",
    "MainInit",
    "MainMouseMode",
    "MainMouseModeRequest",
    "MainName",
    "MainUuid",
    "Migrate",
    "Notify",
    "Ping",
    "Pong",
    "PortEventMsg",
    "PortInit",
    "SetAck",
    "VmcCompressedData",
    "VmcData",
    "VmcMigrateDataHeader",
    "WaitForChannel",
    "WaitForChannels",
    "check_vmc_migrate_data",
    "name_and_uuid",
    "unpack_fixed",
]
