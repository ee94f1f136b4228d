"""The common channel migration message every channel may get (spice.proto's
SpiceMsgMigrate): SPICE_MSG_MIGRATE, a u32 of flags. With NEED_FLUSH the client answers
MIGRATE_FLUSH_MARK; with NEED_DATA_TRANSFER the next message on that connection is
SPICE_MSG_MIGRATE_DATA, whose body the client hands to the destination unchanged as
SPICE_MSGC_MIGRATE_DATA. spice-server sends flags 3 on the main and VMC channels.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

from .constants import MsgCommon
from .message_base import FixedLayout


class MigrateFlags(enum.IntFlag):
    NEED_FLUSH = 1
    NEED_DATA_TRANSFER = 2


@dataclass(frozen=True, slots=True)
class Migrate(FixedLayout):
    """SPICE_MSG_MIGRATE: what the client must do before the channel moves."""

    TYPE: ClassVar[int] = MsgCommon.MIGRATE
    _S: ClassVar[struct.Struct] = struct.Struct("<I")
    flags: int

    @property
    def need_flush(self) -> bool:
        return bool(self.flags & MigrateFlags.NEED_FLUSH)

    @property
    def need_data(self) -> bool:
        return bool(self.flags & MigrateFlags.NEED_DATA_TRANSFER)
