"""SPICE_MSG_MIGRATE (protocol/messages_migrate.py): the u32 flags every channel may get."""

from __future__ import annotations

import pytest

from trivmc.protocol import MsgCommon, TruncatedMessage
from trivmc.protocol.messages_migrate import Migrate, MigrateFlags


def test_flags_round_trip() -> None:
    assert Migrate.TYPE == MsgCommon.MIGRATE == 1
    body = Migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER).encode()
    assert body == b"\x03\x00\x00\x00"  # what spice-server sends on main and VMC channels
    mig = Migrate.decode(body)
    assert mig.need_flush and mig.need_data
    assert not Migrate.decode(b"\x02\x00\x00\x00").need_flush
    assert not Migrate.decode(b"\x01\x00\x00\x00extra").need_data  # trailing bytes ignored


def test_short_body_is_an_error() -> None:
    with pytest.raises(TruncatedMessage):
        Migrate.decode(b"\x03\x00")
