"""Channel machinery: unix sockets (no LZ4), webdav, the ACK window, pings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend, NullBackend
from trivmc.client import connect
from trivmc.protocol import (
    MessageDecoder,
)
from trivmc.server import ChannelClient, ChannelOptions, Server, ServerConfig


async def test_unix_socket_has_no_lz4(tmp_path: Path) -> None:
    path = str(tmp_path / "spice.sock")
    server = Server(ServerConfig(unix=[path], key_pool_size=2))
    server.add_usbredir(EchoBackend())
    async with server as addrs:
        assert addrs == [path]
        async with connect(f"spice+unix://{path}") as session:
            ch = await session.open_usbredir(0)
            payload = b"compressible " * 10_000
            await ch.send_all(payload)
            got = b""
            with trio.fail_after(10):
                while len(got) < len(payload):
                    got += await ch.receive_some()
            assert got == payload
        stats = server.channels[(9, 0)].device.stats
        assert stats.in_compressed == 0 and stats.out_compressed == 0  # never on AF_UNIX


async def test_webdav_channel_port_init() -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    server.add_webdav(EchoBackend())
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}") as session:
            assert session.channels == [(11, 0)]
            ch = await session.open_webdav()
            assert await ch.wait_port_init() == "org.spice-space.webdav.0"


async def test_main_channel_tolerates_agent_and_mouse_messages() -> None:
    from trivmc.client.session import MessageConnection, link_channel, parse_uri
    from trivmc.protocol import MainInit, MsgcMain, MsgMain

    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    server.add_port("org.x.0", EchoBackend())
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        linked = await link_channel(parse_uri(f"spice://{host}:{port}"), 0, 1, 0, [], None)
        conn = MessageConnection(linked)
        async with linked.stream:
            msg = await conn.receive()
            assert msg is not None and msg.type == MsgMain.INIT
            assert MainInit.decode(msg.body).agent_connected == 0  # never claims an agent
            for mtype, body in (
                (MsgcMain.CLIENT_INFO, bytes(8)),
                (MsgcMain.MOUSE_MODE_REQUEST, b"\x02\x00"),
                (MsgcMain.AGENT_START, b"\xff\xff\xff\xff"),
                (MsgcMain.AGENT_DATA, b"agent bytes"),
                (MsgcMain.AGENT_TOKEN, bytes(4)),
                (MsgcMain.ATTACH_CHANNELS, b""),
            ):
                await conn.send(mtype, body)
            with trio.fail_after(10):
                msg = await conn.receive()
            assert msg is not None and msg.type == MsgMain.CHANNELS_LIST
            assert len(server.sessions) == 1


def test_at_most_256_port_channels_with_a_clear_error() -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)]))
    channels = [server.add_port(f"org.test.p{i}", EchoBackend()) for i in range(256)]
    assert sorted(ch.channel_id for ch in channels) == list(range(256))
    with pytest.raises(ValueError, match="one byte"):
        server.add_port("org.test.one-too-many", EchoBackend())
    assert len(server.channels) == 256


async def test_messages_written_at_once_keep_their_order_when_the_kernel_takes_part() -> None:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    opts = ChannelOptions("t", mini_header=True, max_message=1 << 20, is_unix=True)
    client = ChannelClient(trio.SocketStream(a), opts)
    bodies = [bytes([i]) * 3000 for i in range(200)]  # far more than the socket buffers
    peer = trio.SocketStream(b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        await trio.testing.wait_all_tasks_blocked()
        for body in bodies:
            client.send(101, body)
        assert 0 < client.queued_bytes < sum(map(len, bodies))  # part written, the rest queued
        decoder = MessageDecoder(True, 1 << 20)
        got: list[bytes] = []
        with trio.fail_after(10):
            while len(got) < len(bodies):
                got += [bytes(m.body) for m in decoder.feed(await peer.receive_some(65536))]
            await client.wait_queued_below(1)
        assert got == bodies and client.queued_bytes == 0
        client.send(102, b"after")  # nothing queued: written at once again
        assert client.queued_bytes == 0
        msg = next(iter(decoder.feed(await peer.receive_some(65536))))
        assert (msg.type, bytes(msg.body)) == (102, b"after")
        nursery.cancel_scope.cancel()
    await peer.aclose()


def test_find_channel() -> None:
    server = Server(ServerConfig())
    qmp = server.add_port("org.qemu.monitor.qmp.0", NullBackend())
    odd = server.add_port("usbredir:1", NullBackend())  # a port's name wins
    u0 = server.add_usbredir(NullBackend())
    u1 = server.add_usbredir(NullBackend())
    dav = server.add_webdav(NullBackend())
    assert server.find_channel("org.qemu.monitor.qmp.0") is qmp
    assert server.find_channel("port:0") is qmp
    assert server.find_channel("usbredir") is u0
    assert server.find_channel("usbredir:0") is u0
    assert server.find_channel("usbredir:1") is odd
    assert server.find_channel("webdav") is dav
    assert u1.channel_id == 1
    for missing in ("org.nope.0", "usbredir:7", "port:x", "display:0", "webdav:0"):
        with pytest.raises(LookupError) as e:
            server.find_channel(missing)
        assert f"no hosted channel {missing!r}" in str(e.value)
        assert "hosted: port:0 (org.qemu.monitor.qmp.0), port:1 (usbredir:1)" in str(e.value)
