"""The main channel's migration messages: round trips, the layout spice-server sends
(offsets from the body's start, strings after the fixed part), and bodies that lie."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivmc.protocol import (
    MainMigrateBegin,
    MainMigrateBeginSeamless,
    MainMigrateDstDoSeamless,
    MainMigrateSwitchHost,
    MigrationDstInfo,
    ProtocolError,
)

DST = MigrationDstInfo(5930, 5931, b"127.0.0.1", b"CN=dest")


def test_layout_is_spice_servers() -> None:
    body = MainMigrateBegin(DST).encode()
    port, sport, host_size, host_at, subject_size, subject_at = struct.unpack_from("<HHIIII", body)
    assert (port, sport) == (5930, 5931)
    assert body[host_at : host_at + host_size] == b"127.0.0.1\0" and host_at == 20
    assert body[subject_at : subject_at + subject_size] == b"CN=dest\0"


def test_seamless_keeps_its_version_after_the_fixed_part() -> None:
    body = MainMigrateBeginSeamless(DST, 1).encode()
    assert struct.unpack_from("<I", body, 20) == (1,)
    assert MainMigrateBeginSeamless.decode(body) == MainMigrateBeginSeamless(DST, 1)
    assert MainMigrateDstDoSeamless.decode(MainMigrateDstDoSeamless(1).encode()).src_version == 1


@given(
    port=st.integers(0, 0xFFFF),
    sport=st.integers(0, 0xFFFF),
    host=st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b),
    subject=st.binary(max_size=200).filter(lambda b: b"\0" not in b),
)
def test_round_trips(port: int, sport: int, host: bytes, subject: bytes) -> None:
    dst = MigrationDstInfo(port, sport, host, subject)
    assert MainMigrateBegin.decode(MainMigrateBegin(dst).encode()).dst == dst
    assert MainMigrateSwitchHost.decode(MainMigrateSwitchHost(dst).encode()).dst == dst


@pytest.mark.parametrize(
    "body",
    [
        b"",
        struct.pack("<HHIIII", 1, 0, 0, 20, 0, 0),  # no host
        struct.pack("<HHIIII", 1, 0, 10, 20, 0, 0) + b"short",  # host beyond the body
        struct.pack("<HHIIII", 1, 0, 4, 2, 0, 0) + b"abc\0",  # host inside the fixed part
        struct.pack("<HHIIII", 1, 0, 1 << 30, 20, 0, 0),  # absurd size
        struct.pack("<HHIIII", 1, 0, 2, 20, 9, 22) + b"a\0",  # subject beyond the body
    ],
)
def test_bodies_that_lie_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        MainMigrateBegin.decode(body)


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_protocol_error(body: bytes) -> None:
    for codec in (MainMigrateBegin, MainMigrateSwitchHost, MainMigrateBeginSeamless):
        try:
            codec.decode(body)
        except ProtocolError:
            pass
