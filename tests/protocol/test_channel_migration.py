"""The server side's migration rules in the sans-IO channel connection, and the
migration target's checks of a spicevmc MIGRATE_DATA body (SVMD)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivmc.protocol import (
    ChannelConnection,
    Message,
    MessageDecoder,
    MessageEncoder,
    MessageTooLarge,
    Migrate,
    MigrateDataReceived,
    MigrateFlags,
    MigrateFlushMark,
    MigrationState,
    MsgcCommon,
    MsgCommon,
    ProtocolError,
    Role,
    TruncatedMessage,
    VmcMigrateDataHeader,
    check_vmc_migrate_data,
)

CHANNEL_MSG = 101
BOTH = MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER


def server() -> ChannelConnection:
    return ChannelConnection(Role.SERVER, mini_header=True, max_message=1 << 16, name="t")


def test_migrate_queues_the_message_and_awaits_the_flush_mark() -> None:
    s = server()
    s.migrate(BOTH)
    (m,) = MessageDecoder(True, 1 << 16).feed(s.data_to_send())
    assert m.type == MsgCommon.MIGRATE and Migrate.decode(m.body).flags == 3
    assert s.migration is MigrationState.FLUSH_AWAITED
    data = Message(CHANNEL_MSG, b"before the mark")
    assert s.handle(data) is data  # sent before the client saw MIGRATE: still the channel's
    assert isinstance(s.handle(Message(MsgcCommon.MIGRATE_FLUSH_MARK, b"")), MigrateFlushMark)
    assert s.migration is MigrationState.FLUSHED
    assert s.handle(Message(MsgcCommon.ACK_SYNC, struct.pack("<I", 1))) is None  # common: fine
    with pytest.raises(ProtocolError, match="after the flush mark"):
        s.handle(Message(CHANNEL_MSG, b"late"))
    with pytest.raises(RuntimeError):
        s.migrate(BOTH)  # one migration at a time


def test_a_second_flush_mark_and_data_on_the_source_are_errors() -> None:
    s = server()
    s.migrate(BOTH)
    with pytest.raises(ProtocolError, match="MIGRATE_DATA unexpected"):
        s.handle(Message(MsgcCommon.MIGRATE_DATA, b""))
    s.handle(Message(MsgcCommon.MIGRATE_FLUSH_MARK, b""))
    with pytest.raises(ProtocolError, match="MIGRATE_FLUSH_MARK unexpected"):
        s.handle(Message(MsgcCommon.MIGRATE_FLUSH_MARK, b""))


def test_without_need_flush_no_mark_is_awaited() -> None:
    s = server()
    s.migrate(MigrateFlags.NEED_DATA_TRANSFER)
    assert s.migration is MigrationState.NONE
    with pytest.raises(ProtocolError, match="without migration"):
        s.handle(Message(MsgcCommon.MIGRATE_FLUSH_MARK, b""))


def test_a_target_takes_migrate_data_first_then_channel_messages() -> None:
    s = server()
    s.expect_migrate_data()
    with pytest.raises(ProtocolError, match="before MIGRATE_DATA"):
        s.handle(Message(CHANNEL_MSG, b"too early"))
    t = server()
    t.expect_migrate_data()
    with pytest.raises(ProtocolError, match="MIGRATE_FLUSH_MARK unexpected"):
        t.handle(Message(MsgcCommon.MIGRATE_FLUSH_MARK, b""))
    u = server()
    u.expect_migrate_data()
    event = u.handle(Message(MsgcCommon.MIGRATE_DATA, b"svmd"))
    assert isinstance(event, MigrateDataReceived) and event.body == b"svmd"
    data = Message(CHANNEL_MSG, b"now")
    assert u.handle(data) is data
    with pytest.raises(ProtocolError, match="without migration"):
        u.handle(Message(MsgcCommon.MIGRATE_DATA, b"again"))


def test_a_target_may_take_a_migrate_data_above_max_message_once() -> None:
    s = ChannelConnection(Role.SERVER, mini_header=True, max_message=16)
    s.expect_migrate_data(max_size=100)
    encoder = MessageEncoder(True)
    with pytest.raises(MessageTooLarge):  # a channel message keeps max_message
        ChannelConnection(Role.SERVER, mini_header=True, max_message=16).decoder.feed(
            encoder.encode(CHANNEL_MSG, bytes(17))
        )
    (m,) = s.decoder.feed(encoder.encode(MsgcCommon.MIGRATE_DATA, bytes(100)))
    assert isinstance(s.handle(m), MigrateDataReceived)
    with pytest.raises(MessageTooLarge):  # taken once: the bound is back
        s.decoder.feed(encoder.encode(MsgcCommon.MIGRATE_DATA, bytes(17)))
    t = ChannelConnection(Role.SERVER, mini_header=True, max_message=16)
    t.expect_migrate_data(max_size=100)
    with pytest.raises(MessageTooLarge):
        t.decoder.feed(encoder.encode(MsgcCommon.MIGRATE_DATA, bytes(101)))
    u = ChannelConnection(Role.SERVER, mini_header=True, max_message=16)
    u.expect_migrate_data(max_size=100)
    with pytest.raises(MessageTooLarge):
        u.decoder.feed(encoder.encode(CHANNEL_MSG, bytes(17)))


def test_client_side_cannot_enter_the_server_states() -> None:
    c = ChannelConnection(Role.CLIENT, mini_header=True, max_message=1 << 16)
    with pytest.raises(RuntimeError):
        c.migrate(BOTH)
    with pytest.raises(RuntimeError):
        c.expect_migrate_data()


KINDS = st.sampled_from(["channel", "flush", "data", "ack_sync"])


@given(st.sampled_from(["none", "source", "target"]), st.lists(KINDS, max_size=12))
def test_any_sequence_keeps_the_rules(mode: str, kinds: list[str]) -> None:
    """Whatever the client sends: a flush mark is taken only after MIGRATE with
    NEED_FLUSH, at most once; no channel message gets through after it; a target passes
    no channel message before MIGRATE_DATA, and takes MIGRATE_DATA once; the first
    violation raises ProtocolError and nothing else does."""
    s = server()
    if mode == "source":
        s.migrate(BOTH)
    elif mode == "target":
        s.expect_migrate_data()
    flushed = data_seen = False
    for kind in kinds:
        m = {
            "channel": Message(CHANNEL_MSG, b"x"),
            "flush": Message(MsgcCommon.MIGRATE_FLUSH_MARK, b""),
            "data": Message(MsgcCommon.MIGRATE_DATA, b"body"),
            "ack_sync": Message(MsgcCommon.ACK_SYNC, struct.pack("<I", 0)),
        }[kind]
        allowed = {
            "channel": not flushed and (mode != "target" or data_seen),
            "flush": mode == "source" and not flushed,
            "data": mode == "target" and not data_seen,
            "ack_sync": True,
        }[kind]
        if not allowed:
            with pytest.raises(ProtocolError):
                s.handle(m)
            return
        out = s.handle(m)
        if kind == "channel":
            assert out is m
        elif kind == "flush":
            assert isinstance(out, MigrateFlushMark)
            flushed = True
        elif kind == "data":
            assert isinstance(out, MigrateDataReceived) and out.body == b"body"
            data_seen = True
        else:
            assert out is None


# ---- the target's SVMD checks ------------------------------------------------------

HEADER = struct.Struct("<4sIIBIIIII")


def svmd(
    pending: bytes = b"abc",
    *,
    magic: bytes = b"SVMD",
    version: int = 1,
    chardev_version: int = 1,
    connected: int = 1,
    write_size: int | None = None,
    write_data_ptr: int = 33,
) -> bytes:
    size = len(pending) if write_size is None else write_size
    fixed = HEADER.pack(
        magic, version, chardev_version, connected, 2**32 - 1, 2**32 - 1, size, 0, write_data_ptr
    )
    return fixed + pending


def test_a_good_body_round_trips_through_the_codec() -> None:
    body = VmcMigrateDataHeader(True, 2**32 - 1, 2**32 - 1, 3, 0, pending=b"abc").encode()
    assert body == svmd(b"abc")
    got = check_vmc_migrate_data(memoryview(body), max_write=3)
    assert got.pending == b"abc" and got.write_size == 3
    assert check_vmc_migrate_data(svmd(b""), max_write=0).pending == b""
    assert check_vmc_migrate_data(svmd(b"", version=0), max_write=0).version == 0


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (svmd()[:32], "header alone"),
        (svmd(magic=b"XVMD"), "bad magic"),
        (svmd(version=2), "SVMD version 2"),
        (svmd(chardev_version=2), "char-device version 2"),
        (svmd(connected=0), "connected is 0"),
        (svmd(b"x" * 11), "above the bound 10"),
        (svmd(write_size=2**32 - 1), "above the bound"),
        (svmd(write_data_ptr=0), "inside the 33-byte header"),
        (svmd(write_data_ptr=32), "inside"),
        (svmd(write_size=4), "does not end"),
        (svmd(write_size=2), "does not end"),
        (svmd(write_data_ptr=34), "does not end"),
        (svmd() + b"trailing", "does not end"),
    ],
)
def test_every_malformed_body_is_refused_with_a_clear_error(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        check_vmc_migrate_data(body, max_write=10)


def test_a_short_body_is_truncated() -> None:
    with pytest.raises(TruncatedMessage):
        check_vmc_migrate_data(b"SVMD", max_write=10)


@given(st.binary(max_size=80), st.integers(0, 64))
def test_any_body_is_accepted_exactly_when_it_is_well_formed(body: bytes, budget: int) -> None:
    try:
        got = check_vmc_migrate_data(body, max_write=budget)
    except ProtocolError:
        return
    assert body[:4] == b"SVMD" and got.write_size <= budget
    assert got.write_data_ptr + got.write_size == len(body) and got.write_data_ptr >= 33
    assert got.pending == body[got.write_data_ptr :]
