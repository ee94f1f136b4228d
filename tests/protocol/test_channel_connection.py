"""The sans-IO channel connection on its own: no sockets, no trio.

Both sides are `ChannelConnection`s; the tests carry bytes between them by hand, so a
rule both sides got wrong together shows up as a broken invariant, not a passing echo.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.protocol import (
    AckSync,
    ChannelConnection,
    Message,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgCommon,
    PeerDisconnecting,
    Ping,
    Pong,
    ProtocolError,
    Role,
    SetAck,
    UnknownMessage,
    WindowOpened,
)

CHANNEL_MSG = 101


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


def server(window: int | None = None, clock: Clock | None = None) -> ChannelConnection:
    return ChannelConnection(
        Role.SERVER,
        mini_header=True,
        max_message=1 << 16,
        ack_window=window,
        clock=clock or Clock(),
    )


def client() -> ChannelConnection:
    return ChannelConnection(Role.CLIENT, mini_header=True, max_message=1 << 16)


def decode(data: bytes) -> list[Message]:
    return MessageDecoder(True, 1 << 16).feed(data)


def msg(mtype: int, body: bytes = b"") -> Message:
    return Message(mtype, body)


# ---- the server side -----------------------------------------------------------


def test_without_a_window_the_server_says_nothing_first_and_always_may_send() -> None:
    s = server()
    s.start()
    assert s.data_to_send() == b"" and s.may_send
    for _ in range(1000):
        s.message_sent()
    assert s.may_send


def test_set_ack_first_then_at_most_twice_the_window_unacked() -> None:
    s = server(window=3)
    s.start()
    (set_ack,) = decode(s.data_to_send())
    assert set_ack.type == MsgCommon.SET_ACK
    assert SetAck.decode(set_ack.body) == SetAck(1, 3)
    sent = 0
    while s.may_send:
        s.message_sent()
        sent += 1
    assert sent == 2 * 3 + 1  # SET_ACK itself, then six of the channel's


def test_an_ack_opens_the_window_only_for_the_current_generation() -> None:
    s = server(window=2)
    s.start()
    s.data_to_send()
    while s.may_send:
        s.message_sent()
    assert s.handle(msg(MsgcCommon.ACK)) is None  # no ACK_SYNC yet: not ours
    assert not s.may_send
    assert s.handle(msg(MsgcCommon.ACK_SYNC, AckSync(7).encode())) is None
    assert s.handle(msg(MsgcCommon.ACK)) is None  # generation 7 is not the current one
    assert s.handle(msg(MsgcCommon.ACK_SYNC, AckSync(1).encode())) is None
    assert isinstance(s.handle(msg(MsgcCommon.ACK)), WindowOpened)
    assert s.may_send


def test_pong_matching_a_ping_gives_the_rtt_and_clears_the_misses() -> None:
    clock = Clock()
    s = server(clock=clock)
    s.ping()
    clock.ns += 5_000_000
    s.ping()
    first, second = (Ping.decode(m.body) for m in decode(s.data_to_send()))
    assert s.pings_unanswered == 2
    assert s.handle(msg(MsgcCommon.PONG, Pong(first.id, first.timestamp + 1).encode())) is None
    assert s.pings_unanswered == 2 and s.min_rtt is None  # a stranger's timestamp
    clock.ns += 1_000_000
    s.handle(msg(MsgcCommon.PONG, Pong(second.id, second.timestamp).encode()))
    assert s.pings_unanswered == 0 and s.min_rtt == pytest.approx(0.001)
    s.handle(msg(MsgcCommon.PONG, Pong(first.id, first.timestamp).encode()))
    assert s.min_rtt == pytest.approx(0.001)  # forgotten with the later one: ignored


def test_only_the_last_pings_are_remembered() -> None:
    s = server()
    for _ in range(20):
        s.ping()
    oldest = Ping.decode(decode(s.data_to_send())[0].body)
    s.handle(msg(MsgcCommon.PONG, Pong(oldest.id, oldest.timestamp).encode()))
    assert s.pings_unanswered == 20


def test_server_side_message_rules() -> None:
    s = server()
    m = msg(CHANNEL_MSG, b"x")
    assert s.handle(m) is m
    assert isinstance(s.handle(msg(MsgcCommon.DISCONNECTING)), PeerDisconnecting)
    for mtype in (MsgcCommon.MIGRATE_FLUSH_MARK, MsgcCommon.MIGRATE_DATA):
        with pytest.raises(ProtocolError, match="migration"):
            s.handle(msg(mtype))
    with pytest.raises(UnknownMessage):
        s.handle(msg(0))
    with pytest.raises(ProtocolError):
        s.handle(msg(MsgcCommon.PONG, b"short"))


# ---- the client side -----------------------------------------------------------


def test_client_answers_ping_and_set_ack_and_acks_every_window() -> None:
    c = client()
    assert c.handle(msg(MsgCommon.PING, Ping(9, 1234).encode())) is None
    (pong,) = decode(c.data_to_send())
    assert (pong.type, Pong.decode(pong.body)) == (MsgcCommon.PONG, Pong(9, 1234))
    assert c.handle(msg(MsgCommon.SET_ACK, SetAck(4, 3).encode())) is None
    (sync,) = decode(c.data_to_send())
    assert (sync.type, AckSync.decode(sync.body).generation) == (MsgcCommon.ACK_SYNC, 4)
    acks = 0
    for _ in range(9):
        c.handle(msg(CHANNEL_MSG))
        acks += sum(m.type == MsgcCommon.ACK for m in decode(c.data_to_send()))
    assert acks == 3


def test_client_side_message_rules() -> None:
    c = client()
    m = msg(CHANNEL_MSG)
    assert c.handle(m) is m
    assert isinstance(c.handle(msg(MsgCommon.DISCONNECTING)), PeerDisconnecting)
    for mtype in (MsgCommon.NOTIFY, MsgCommon.MIGRATE, MsgCommon.LIST, 0, 100):
        assert c.handle(msg(mtype)) is None
    assert c.data_to_send() == b""


# ---- both sides together -------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    window=st.integers(1, 8),
    total=st.integers(0, 60),
    schedule=st.lists(st.sampled_from(["server", "client", "ping"]), max_size=300),
)
def test_window_bounds_and_delivers_under_any_schedule(
    window: int, total: int, schedule: list[str]
) -> None:
    """However the two directions interleave, the server never has more than twice the
    window (plus its SET_ACK) unacknowledged, and once both directions are drained
    every message is through and the window is open again."""
    s, c = server(window), client()
    to_client = MessageDecoder(True, 1 << 16)
    to_server = MessageDecoder(True, 1 << 16)
    enc = MessageEncoder(True)
    wire_down = bytearray()  # server -> client, not yet delivered
    wire_up = bytearray()  # client -> server
    s.start()
    s.message_sent()  # the SET_ACK goes through the window like any message
    wire_down += s.data_to_send()
    delivered = sent = 0

    def server_step() -> None:
        nonlocal sent
        if sent < total and s.may_send:
            s.message_sent()
            sent += 1
            wire_down.extend(enc.encode(CHANNEL_MSG, sent.to_bytes(4, "little")))
        assert s.unacked <= 2 * window + 1

    def deliver_down() -> None:
        nonlocal delivered
        for m in to_client.feed(bytes(wire_down)):
            event = c.handle(m)
            if isinstance(event, Message):
                delivered += 1
                assert int.from_bytes(event.body, "little") == delivered  # in order
        wire_down.clear()
        wire_up.extend(c.data_to_send())

    def deliver_up() -> None:
        for m in to_server.feed(bytes(wire_up)):
            s.handle(m)
        wire_up.clear()

    for step in schedule:
        if step == "server":
            server_step()
        elif step == "client":
            deliver_down()
            deliver_up()
        elif s.may_send:  # a PING waits for the window like any message
            s.ping()
            s.message_sent()
            wire_down.extend(s.data_to_send())
    for _ in range(4 * total + 4):  # drain: both ways until nothing moves
        server_step()
        deliver_down()
        deliver_up()
    assert delivered == sent == total
    assert s.pings_unanswered == 0
    assert s.may_send
