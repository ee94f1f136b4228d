"""A usbredir channel follows its QEMU side, as spice-server + QEMU do: offered only while
the backend's peer is connected; QEMU's first words (its usbredir hello) kept for the
next client; a fresh peer connection for every client session, so QEMU resets between
sessions and never gets a previous session's bytes; the client's channel closed when
the peer goes away, and the channel announced to every session when it is back."""

from __future__ import annotations

import trio
import trio.testing

from trivmc.backends import TcpConnectBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.client.address import parse_uri
from trivmc.client.connection import link_channel
from trivmc.client.session import Session
from trivmc.protocol import ChannelType, LinkError
from trivmc.server import Server, ServerConfig, VmcChannel

from .test_bad_input import settle

USBREDIR = int(ChannelType.USBREDIR)


class Qemu:
    """The QEMU side of a usb-redir chardev: a socket that listens on a fixed port and
    says its hello to each connection it accepts; it can go away and come back."""

    def __init__(self) -> None:
        self.port = 0
        self.listener: trio.socket.SocketType | None = None
        self.accepted = 0

    async def listen(self) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind(("127.0.0.1", self.port))
        sock.listen(4)
        self.port = sock.getsockname()[1]
        self.listener = sock

    def go_away(self) -> None:
        assert self.listener is not None
        self.listener.close()
        self.listener = None

    async def accept(self, hello: bytes) -> trio.socket.SocketType:
        assert self.listener is not None
        with trio.fail_after(30):
            conn, _ = await self.listener.accept()
        self.accepted += 1
        await conn.send(hello)  # QEMU's usb-redir speaks first
        return conn


async def reserve_port(qemu: Qemu) -> None:
    """Pick the port QEMU will listen on, without listening yet."""
    await qemu.listen()
    qemu.go_away()


async def read_until_closed(conn: trio.socket.SocketType) -> bytes:
    out = b""
    with trio.fail_after(60):
        while data := await conn.recv(65536):
            out += data
    return out


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    out = b""
    with trio.fail_after(30):
        while len(out) < n:
            data = await stream.receive_some(n - len(out))
            assert data, f"closed after {out!r}"
            out += data
    return out


def gateway(qemu_port: int) -> tuple[Server, VmcChannel, TcpConnectBackend]:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=8, key_process=False)
    server = Server(cfg)
    backend = TcpConnectBackend("127.0.0.1", qemu_port, reconnect=0.5, drain=2.0)
    channel = server.add_usbredir(backend)
    return server, channel, backend


def uri_of(addrs: list[object]) -> str:
    return f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]


async def test_offered_only_while_qemu_is_reachable_and_announced_when_it_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    qemu = Qemu()
    await reserve_port(qemu)
    server, channel, backend = gateway(qemu.port)
    async with server as addrs, connect(uri_of(addrs), lz4=False) as session:
        await settle(lambda: backend.connect_failures > 0)
        assert (USBREDIR, 0) not in session.channel_list  # QEMU is not there
        assert not channel.available
        await refused(uri_of(addrs), session)
        await qemu.listen()
        conn = await qemu.accept(b"HELLO-1")
        with trio.fail_after(30):
            assert await session.wait_channel(USBREDIR) == (USBREDIR, 0)
        redir = await session.open_usbredir(0)
        assert await read_exactly(redir, 7) == b"HELLO-1"  # kept until a client came
        await redir.send_all(b"client hello")
        with trio.fail_after(30):
            assert await conn.recv(100) == b"client hello"
        conn.close()


async def refused(uri: str, session: Session) -> None:
    """A usbredir link of `session` is refused as not available."""
    try:
        await link_channel(parse_uri(uri), session.session_id, USBREDIR, 0, [], None)
    except SpiceLinkError as e:
        assert e.code == LinkError.CHANNEL_NOT_AVAILABLE
    else:
        raise AssertionError("a withdrawn usbredir channel was linked")


async def test_each_session_gets_a_fresh_qemu_connection_and_nothing_of_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sends, leaves; its connection to QEMU gets every byte of A and is then closed;
    a fresh connection is opened at once (QEMU resets its device in between), and B
    sees only that connection's hello and its own traffic, in both directions."""
    qemu = Qemu()
    await qemu.listen()
    server, channel, backend = gateway(qemu.port)
    async with server as addrs:
        uri = uri_of(addrs)
        conn_a = await qemu.accept(b"HELLO-A")
        async with connect(uri, lz4=False) as a:
            await a.wait_channel(USBREDIR, 0)
            redir_a = await a.open_usbredir(0)
            assert await read_exactly(redir_a, 7) == b"HELLO-A"
            await redir_a.send_all(b"a" * 100_000)
        got_a = await read_until_closed(conn_a)  # closed at A's session boundary
        assert got_a == b"a" * 100_000
        await conn_a.send(b"late words of A's QEMU")  # after A left: shown to nobody
        conn_b = await qemu.accept(b"HELLO-B")  # the gateway reconnected by itself
        assert channel.available  # the boundary's own close never withdrew it
        await settle(lambda: backend.peer is not None)
        assert backend.can_read() == 0  # a fresh QEMU connection takes no client's bytes
        async with connect(uri, lz4=False) as b:
            redir_b = await b.open_usbredir(0)
            assert await read_exactly(redir_b, 7) == b"HELLO-B"
            await redir_b.send_all(b"b" * 1000)
            got_b = b""
            with trio.fail_after(30):
                while len(got_b) < 1000:
                    got_b += await conn_b.recv(65536)
            assert got_b == b"b" * 1000
            await conn_b.send(b"to B")
            assert await read_exactly(redir_b, 4) == b"to B"
        assert channel.bytes_dropped == 0 and backend.dropped == 0
        await settle(lambda: channel.device.idle and channel.client is None)
        conn_a.close()
        conn_b.close()


async def test_qemu_going_away_closes_the_clients_channel_and_its_return_is_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    qemu = Qemu()
    await qemu.listen()
    server, channel, backend = gateway(qemu.port)
    async with server as addrs, connect(uri_of(addrs), lz4=False) as session:
        conn = await qemu.accept(b"HELLO-1")
        await session.wait_channel(USBREDIR, 0)
        redir = await session.open_usbredir(0)
        assert await read_exactly(redir, 7) == b"HELLO-1"
        qemu.go_away()  # device_del: QEMU closes the connection and its listener
        conn.close()
        with trio.fail_after(30):
            assert await redir.receive_some() == b""  # the server closed the channel
        await settle(lambda: not channel.available and channel.client is None)
        await refused(uri_of(addrs), session)
        failures = backend.connect_failures
        await settle(lambda: backend.connect_failures > failures)  # it keeps trying
        session.channels.clear()  # forget the first list: the announcement must refill it
        await qemu.listen()  # device_add: back on the same port
        conn2 = await qemu.accept(b"HELLO-2")
        with trio.fail_after(30):
            await session.wait_channel(USBREDIR, 0)  # announced to the live session
        redir2 = await session.open_usbredir(0)
        assert await read_exactly(redir2, 7) == b"HELLO-2"
        await redir2.send_all(b"again")
        with trio.fail_after(30):
            assert await conn2.recv(100) == b"again"
        conn2.close()


async def test_a_session_linked_while_withdrawn_gets_the_announcement_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    qemu = Qemu()
    await reserve_port(qemu)
    server, _channel, backend = gateway(qemu.port)
    lists: list[list[tuple[int, int]]] = []
    async with server as addrs, connect(uri_of(addrs), lz4=False) as session:
        on_main = session._on_main

        def spy(msg: object) -> None:
            before = list(session.channels)
            on_main(msg)  # type: ignore[arg-type]
            lists.append([c for c in session.channels if c not in before])

        session._on_main = spy  # type: ignore[method-assign]
        await settle(lambda: backend.connect_failures > 0)
        await qemu.listen()
        conn = await qemu.accept(b"H")
        await session.wait_channel(USBREDIR, 0)
        await settle(lambda: backend.peer is not None)
        assert lists == [[(USBREDIR, 0)]]
        conn.close()


async def test_offered_once_qemu_speaks_not_when_its_socket_accepts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """QEMU's chardev socket accepts before its usb-redir device exists (chardev-add,
    then device_add): the channel is offered only once QEMU has said its hello."""
    qemu = Qemu()
    await qemu.listen()
    server, channel, backend = gateway(qemu.port)
    async with server as addrs, connect(uri_of(addrs), lz4=False) as session:
        assert qemu.listener is not None
        with trio.fail_after(30):
            conn, _ = await qemu.listener.accept()  # connected, and silent
        await settle(lambda: backend.peer is not None)
        assert not channel.available and (USBREDIR, 0) not in session.channel_list
        await conn.send(b"HELLO")  # device_add: QEMU's hello
        with trio.fail_after(30):
            await session.wait_channel(USBREDIR, 0)
        redir = await session.open_usbredir(0)
        assert await read_exactly(redir, 5) == b"HELLO"
        conn.close()


async def test_qemu_lost_during_the_boundary_gets_no_bytes_on_its_new_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leaves with bytes queued (QEMU stalled); QEMU drops that connection during the
    drain and the gateway reconnects at once: the new connection (the next session's)
    gets none of A's bytes, and the boundary ends without waiting for the deadline."""
    qemu = Qemu()
    await qemu.listen()
    server, channel, backend = gateway(qemu.port)
    backend.drain = channel.drain = 30.0
    async with server as addrs:
        uri = uri_of(addrs)
        conn_a = await qemu.accept(b"HELLO-A")
        conn_a.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        async with connect(uri, lz4=False) as a:
            await a.wait_channel(USBREDIR, 0)
            redir_a = await a.open_usbredir(0)
            assert await read_exactly(redir_a, 7) == b"HELLO-A"
            with trio.move_on_after(2):  # QEMU reads nothing: the server queues
                while True:
                    await redir_a.send_all(b"a" * 65536)
        await settle(lambda: channel.client is None)
        left = trio.current_time()
        conn_a.close()  # QEMU drops it during the boundary
        conn_b = await qemu.accept(b"HELLO-B")
        await settle(lambda: channel._session_over.value)
        assert trio.current_time() - left < 5  # not the 30 s deadline
        assert channel.bytes_dropped > 0
        async with connect(uri, lz4=False) as b:
            redir_b = await b.open_usbredir(0)
            assert await read_exactly(redir_b, 7) == b"HELLO-B"
            await redir_b.send_all(b"b" * 10)
            with trio.fail_after(30):
                assert await conn_b.recv(100) == b"b" * 10  # B's first bytes, none of A's
        conn_b.close()
