"""Backends behind a real trivmc server, driven by trivmc's client, all on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from trivmc.backends import (
    Backend,
    BackendSpecError,
    ExecBackend,
    FileBackend,
    TcpConnectBackend,
    TcpListenBackend,
    UnixListenBackend,
    parse_backend,
)
from trivmc.client import ChannelStream, connect
from trivmc.protocol import PortEvent
from trivmc.server import Server, ServerConfig

NAME = "org.trivmc.test.0"


@asynccontextmanager
async def serve_port(backend: Backend) -> AsyncIterator[tuple[Server, str]]:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    server.add_port(NAME, backend)
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        yield server, f"spice://{host}:{port}"


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    out = bytearray()
    with trio.fail_after(10):
        while len(out) < n:
            data = await stream.receive_some(n - len(out))
            assert data, "stream ended early"
            out += data
    return bytes(out)


async def wait_opened(ch: ChannelStream) -> None:
    with trio.fail_after(10):
        while not ch.opened:
            assert await ch.next_event() in (PortEvent.OPENED, PortEvent.CLOSED)


def test_specs() -> None:
    assert isinstance(parse_backend("tcp:127.0.0.1:5555,reconnect=3")(), TcpConnectBackend)
    assert isinstance(parse_backend("tcp-listen:127.0.0.1:0")(), TcpListenBackend)
    assert isinstance(parse_backend("exec:cat -u")(), ExecBackend)
    for bad in (
        "tcp:nohost",
        "tcp:h:1,bogus=1",
        "tcp:h:1,reconnect=x",
        "unix:",
        "warp:9",
        "source:x",
    ):
        with pytest.raises(BackendSpecError):
            parse_backend(bad)


async def test_tcp_connect_reconnects_and_loses_nothing() -> None:
    peers: trio.MemorySendChannel[trio.SocketStream]
    peers, accepted = trio.open_memory_channel[trio.SocketStream](1)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def accept_loop() -> None:
            while True:
                await peers.send(await listeners[0].accept())

        nursery.start_soon(accept_loop)
        backend = TcpConnectBackend("127.0.0.1", port, reconnect=0.2)
        async with serve_port(backend) as (_server, uri), connect(uri) as session:
            ch = await session.open_port(NAME)
            peer = await accepted.receive()  # the backend connects once a client attaches
            await wait_opened(ch)
            await ch.send_all(b"to the peer")
            assert await read_exactly(peer, 11) == b"to the peer"
            await peer.send_all(b"to the client")
            assert await read_exactly(ch, 13) == b"to the client"
            await peer.aclose()  # the peer goes away
            with trio.fail_after(10):
                while ch.opened:
                    await ch.next_event()
            await ch.send_all(b"kept while away")  # waits in the device queue
            peer2 = await accepted.receive()  # bounded backoff reconnect
            assert await read_exactly(peer2, 15) == b"kept while away"
            assert backend.peers_served == 2
            await peer2.aclose()
        nursery.cancel_scope.cancel()
    for lst in listeners:
        await lst.aclose()


async def test_tcp_listen_one_peer_at_a_time() -> None:
    backend = TcpListenBackend("127.0.0.1", 0)
    async with serve_port(backend) as (_server, uri):
        with trio.fail_after(10):
            while backend.bound is None:
                await trio.testing.wait_all_tasks_blocked()
        peer = await trio.open_tcp_stream(*backend.bound)
        async with peer, connect(uri) as session:
            ch = await session.open_port(NAME)
            await wait_opened(ch)
            await ch.send_all(b"hello peer")
            assert await read_exactly(peer, 10) == b"hello peer"
            await peer.send_all(b"hello client")
            assert await read_exactly(ch, 12) == b"hello client"


async def test_unix_listen(tmp_path: Path) -> None:
    path = str(tmp_path / "peer.sock")
    backend = UnixListenBackend(path)
    async with serve_port(backend) as (_server, uri), connect(uri) as session:
        with trio.fail_after(10):
            await backend.listening.wait()  # bound *and* listening
        async with await trio.open_unix_socket(path) as peer:
            ch = await session.open_port(NAME)
            await wait_opened(ch)
            await ch.send_all(b"over unix")
            assert await read_exactly(peer, 9) == b"over unix"


async def test_file_appends(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    backend = FileBackend(str(path))
    payload = os.urandom(300_000)
    async with serve_port(backend) as (server, uri):
        async with connect(uri) as session:
            ch = await session.open_port(NAME)
            await ch.send_all(payload)
        device = server.channels[(10, 0)].device
        with trio.fail_after(10):
            while backend.written < len(payload):
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert device.stats.written == len(payload)
    assert path.read_bytes() == payload


async def test_exec_child_per_client_reaped() -> None:
    echo = (
        "import sys; [sys.stdout.buffer.write(x) or sys.stdout.flush() for x in sys.stdin.buffer]"
    )
    backend = ExecBackend(f'{sys.executable} -u -c "{echo}"')
    async with serve_port(backend) as (_server, uri):
        for round_ in range(2):
            async with connect(uri) as session:
                ch = await session.open_port(NAME)
                await wait_opened(ch)
                await ch.send_all(b"line %d\n" % round_)
                assert await read_exactly(ch, 7) == b"line %d\n" % round_
            with trio.fail_after(10):
                while backend.processes_reaped < round_ + 1:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert backend.processes_reaped == 2


async def test_backend_failure_is_logged_and_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    backend = TcpConnectBackend("127.0.0.1", port, reconnect=0.2)
    async with serve_port(backend) as (server, uri), connect(uri) as session:
        ch = await session.open_port(NAME)
        await ch.send_all(b"waits in the queue")
        with trio.fail_after(10):
            while backend.connect_failures < 2:
                await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        assert "cannot connect" in caplog.text and "retrying" in caplog.text
        assert ch.opened is False
        device = server.channels[(10, 0)].device
        assert device.queued_buffers == 1 and device.stats.written == 0  # kept, not lost


async def test_closing_a_session_closes_its_channels() -> None:
    async with serve_port(parse_backend("echo")()) as (_server, uri):
        async with connect(uri) as session:
            ch = await session.open_port(NAME)
        with pytest.raises(trio.ClosedResourceError):
            await ch.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await ch.send_all(b"x")


def EchoBackendFactory() -> Backend:
    return parse_backend("echo")()
