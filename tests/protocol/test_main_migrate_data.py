"""The main channel's MIGRATE_DATA body (SpiceMigrateDataMain, MNMD): trivmc's "no
agent" body is byte for byte spice-server's, and a target's decode checks the body's
size, magic, versions and offsets before it trusts any field."""

from __future__ import annotations

import struct

import pytest

from trivmc.protocol import (
    MAIN_MIGRATE_DATA_MAX,
    MAIN_MIGRATE_DATA_SIZE,
    MainMigrateData,
    ProtocolError,
)
from trivmc.protocol.errors import TruncatedMessage


def test_the_no_agent_body_is_spice_servers() -> None:
    # reds_marshall_migrate_data without a vdagent: magic, version 1, an empty char
    # device (version 1, all else 0), then zeros to sizeof(SpiceMigrateDataMain) = 57
    body = MainMigrateData().encode()
    assert MAIN_MIGRATE_DATA_SIZE == 65
    assert body == b"MNMD" + struct.pack("<I", 1) + struct.pack("<I", 1) + bytes(53)


def test_round_trip() -> None:
    data = MainMigrateData(
        agent_connected=1,
        num_client_tokens=10,
        num_send_tokens=20,
        client_agent_started=1,
        chunk_header_size=8,
        chunk_port=1,
        chunk_size=300,
        msg_header_done=1,
        agent_msg_remaining=77,
        agent_msg_filter_result=2,
        client_msg_remaining=5,
        client_msg_filter_result=1,
    )
    assert MainMigrateData.decode(data.encode()) == data
    assert MainMigrateData.decode(MainMigrateData().encode()) == MainMigrateData()


def test_offsets_inside_the_body_after_the_fixed_part_are_taken() -> None:
    data = MainMigrateData(
        agent_connected=1,
        msg_header_partial_len=4,
        msg_header_ptr=65,
        write_size=3,
        write_data_ptr=69,
    )
    assert MainMigrateData.decode(data.encode() + b"abcdxyz") == data


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"XNMD" + MainMigrateData().encode()[4:], "bad magic"),
        (MainMigrateData(version=2).encode(), "MNMD version 2"),
        (MainMigrateData(char_device_version=2).encode(), "char-device version 2"),
        (MainMigrateData(agent_connected=7).encode(), "connected is 7"),
        (MainMigrateData(msg_header_partial_len=20, msg_header_ptr=65).encode(), "partial"),
        (MainMigrateData(msg_header_partial_len=4, msg_header_ptr=65).encode(), "outside"),
        (
            MainMigrateData(msg_header_partial_len=4, msg_header_ptr=10).encode() + bytes(4),
            "outside",
        ),
        (MainMigrateData(write_size=1, write_data_ptr=65).encode(), "outside"),
        (MainMigrateData(write_size=2**32 - 1, write_data_ptr=70).encode() + bytes(9), "outside"),
        (MainMigrateData().encode() + bytes(MAIN_MIGRATE_DATA_MAX), "above the bound"),
    ],
)
def test_bad_bodies_are_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        MainMigrateData.decode(body)


@pytest.mark.parametrize("size", [0, 8, 64])
def test_truncated(size: int) -> None:
    with pytest.raises(TruncatedMessage):
        MainMigrateData.decode(MainMigrateData().encode()[:size])


def test_the_bound_is_checked_before_anything_else() -> None:
    oversized = b"junk" * 2000  # not even the magic is looked at
    with pytest.raises(ProtocolError, match="above the bound 100"):
        MainMigrateData.decode(oversized, max_size=100)
    assert MainMigrateData.decode(MainMigrateData().encode(), max_size=65) == MainMigrateData()
