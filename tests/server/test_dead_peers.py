"""Dead peers: PINGs that go unanswered disconnect the client (so a client that
vanished without a FIN frees its channel), answered or late-answered PINGs keep it,
and accepted client sockets carry TCP keepalive as spice-server's do."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.client import connect
from trivmc.protocol import (
    ChannelType,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgCommon,
    Ping,
    Pong,
)
from trivmc.server import ChannelOptions, Server, ServerConfig
from trivmc.server.channel import ChannelClient, PeerUnresponsive

from .test_bad_input import ECHO, settle
from .test_resets import Target, linked_socket
from .test_tls import echo

INTERVAL = 5.0


async def pinged_peer(
    stream: trio.abc.Stream, answer: bool, delay: float = 0.0, pings: list[float] | None = None
) -> None:
    """Read the server's PINGs; answer each (after `delay`) or none."""
    dec, enc = MessageDecoder(True, 1 << 20), MessageEncoder(True)

    async def pong(ping: Ping) -> None:
        await trio.sleep(delay)  # virtual time: a slow peer, not a sync point
        await stream.send_all(enc.encode(MsgcCommon.PONG, Pong(ping.id, ping.timestamp).encode()))

    async with trio.open_nursery() as n:
        while data := await stream.receive_some():
            for msg in dec.feed(data):
                if msg.type != MsgCommon.PING:
                    continue
                if pings is not None:
                    pings.append(trio.current_time())
                if answer:
                    n.start_soon(pong, Ping.decode(msg.body))


def client_over(stream: trio.abc.Stream, misses: int = 3) -> ChannelClient:
    opts = ChannelOptions("t", True, 1 << 16, False, ping_interval=INTERVAL, ping_misses=misses)
    return ChannelClient(stream, opts)


async def test_unanswered_pings_disconnect(autojump_clock: trio.testing.MockClock) -> None:
    a, b = trio.testing.memory_stream_pair()
    client = client_over(a, misses=3)
    pings: list[float] = []
    async with trio.open_nursery() as n:
        n.start_soon(pinged_peer, b, False, 0.0, pings)
        start = trio.current_time()
        with pytest.raises(PeerUnresponsive, match="no PONG for the last 3 PINGs"):
            await client.run()
        elapsed = trio.current_time() - start
        n.cancel_scope.cancel()
    assert len(pings) == 3  # PINGs at 1, 2 and 3 intervals; gone at the 4th
    assert elapsed == pytest.approx(4 * INTERVAL)
    assert client.queued_bytes == 0


@pytest.mark.parametrize("delay", [0.0, 1.5 * INTERVAL], ids=["prompt", "late"])
async def test_answered_pings_keep_the_client(
    autojump_clock: trio.testing.MockClock, delay: float
) -> None:
    a, b = trio.testing.memory_stream_pair()
    client = client_over(a, misses=3)
    async with trio.open_nursery() as n:
        n.start_soon(pinged_peer, b, True, delay)
        n.start_soon(client.run)
        await trio.sleep(50 * INTERVAL)
        assert client.pings_unanswered <= 2  # never reached 3 in a row
        assert client.min_rtt is not None
        n.cancel_scope.cancel()


async def test_vanished_client_frees_its_channel(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A port client that stops answering (it vanished without a FIN: nothing arrives,
    nothing fails) is disconnected after `ping_misses` intervals, so the channel takes
    a new client; a live client beside it (trivmc's, which answers PINGs) stays."""
    caplog.set_level(logging.INFO, logger="trivmc")
    cfg = ServerConfig(
        listen=[("127.0.0.1", 0)],
        key_pool_size=8,
        key_process=False,  # a child process lives in real time, this test in virtual
        multi_session=True,
        ping_interval=INTERVAL,
        ping_misses=2,
    )
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    server.add_port("org.trivmc.other.0", EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        uri = f"spice://127.0.0.1:{port}"
        async with connect(uri) as live, connect(uri) as ghost_session:
            live_ch = await live.open_port("org.trivmc.other.0")
            t = Target(server, port, 0, None)  # type: ignore[arg-type]
            sock, _ = await linked_socket(t, ChannelType.PORT, ghost_session.session_id)
            channel = server.channels[(ChannelType.PORT, 0)]
            await settle(lambda: channel.client is not None)
            await trio.sleep(10 * INTERVAL)  # virtual: the ghost never answers
            assert channel.client is None
            assert "no PONG for the last 2 PINGs" in caplog.text
            sock.close()
            assert await echo(live_ch, b"alive") == b"alive"
            ch = await ghost_session.open_port(ECHO)  # the channel is free again
            assert await echo(ch, b"mine now") == b"mine now"


async def test_accepted_sockets_have_keepalive() -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, tcp_keepalive=123))
    server.add_port(ECHO, EchoBackend())
    async with server as addrs, connect(f"spice://127.0.0.1:{addrs[0][1]}") as s:  # type: ignore[index]
        await s.open_port(ECHO)
        client = server.channels[(ChannelType.PORT, 0)].client
        assert client is not None
        sock = client.stream.socket  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 123
