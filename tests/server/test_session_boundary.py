"""The session boundary of a backend peer: what a client sent reaches *its* peer (within
the drain deadline) and never the next client's; what cannot be delivered by then is
dropped, counted and logged; a new client waits for the boundary; a peer that resets
costs only its own session."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from trivmc.backends import parse_backend
from trivmc.client import connect
from trivmc.protocol import PortEvent
from trivmc.server import Server, ServerConfig, VmcChannel

from .test_bad_input import settle

PORT = "org.trivmc.peer.0"


class Peer:
    """The backend's far side: a listening socket the test accepts from."""

    def __init__(self) -> None:
        self.listener = trio.socket.socket()

    async def start(self) -> int:
        await self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        return int(self.listener.getsockname()[1])

    async def accept(self) -> trio.socket.SocketType:
        with trio.fail_after(30):
            conn, _ = await self.listener.accept()
        return conn


async def read_all(conn: trio.socket.SocketType) -> bytes:
    """Everything the peer connection carries until the backend closes it."""
    out = b""
    with trio.fail_after(60):
        while data := await conn.recv(1 << 20):
            out += data
    return out


async def serving(peer_port: int, drain: float) -> tuple[Server, VmcChannel]:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=8, key_process=False)
    server = Server(cfg)
    spec = f"tcp:127.0.0.1:{peer_port},reconnect=0.5,drain={drain}"
    channel = server.add_port(PORT, parse_backend(spec)())
    return server, channel


async def push_until_blocked(port: trio.abc.SendStream, byte: bytes) -> int:
    """Send 64 KiB writes of `byte` until the server pushes back for a (virtual) second;
    return the bytes handed to the client (the last write may have gone out in part)."""
    sent = 0
    while True:
        with trio.move_on_after(1) as scope:
            await port.send_all(byte * 65536)
            sent += 65536
        if scope.cancelled_caught:
            return sent


async def test_a_stalled_peers_bytes_are_dropped_at_the_boundary_not_given_to_the_next(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer()
    server, channel = await serving(await peer.start(), drain=2.0)
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri, lz4=False) as a:
            port_a = await a.open_port(PORT)
            conn_a = await peer.accept()  # never read: a stalled peer
            sent = await push_until_blocked(port_a, b"A")
        assert sent > channel.device.byte_budget  # the device and the backend held some
        await settle(lambda: channel.device.idle)  # after the 2 s deadline: dropped
        assert channel.bytes_dropped > 0 and channel.device.stats.dropped > 0
        assert "dropped at the session boundary" in caplog.text
        async with connect(uri, lz4=False) as b:
            port_b = await b.open_port(PORT)
            conn_b = await peer.accept()
            await port_b.send_all(b"B" * 1000)
            got = b""
            with trio.fail_after(30):
                while len(got) < 1000:
                    got += await conn_b.recv(65536)
            assert got == b"B" * 1000  # nothing of A's, only B's own bytes
        got_a = await read_all(conn_a)  # A's peer got a prefix of A's bytes, then closed
        assert got_a == b"A" * len(got_a)
        assert len(got_a) + channel.bytes_dropped <= sent
        stats = channel.device.stats
        backend_dropped = channel.backend.dropped  # type: ignore[attr-defined]
        # exact: what the device handed the backend reached A's peer or was dropped there
        assert stats.written - 1000 == len(got_a) + backend_dropped
        assert channel.bytes_dropped == stats.dropped + backend_dropped
        print(
            f"boundary counters: A sent {sent}, device took {stats.written - 1000} of A's,"
            f" A's peer got {len(got_a)}, dropped {channel.bytes_dropped} (device queue"
            f" {stats.dropped}, backend buffer {backend_dropped});"
            f" B's peer got {len(got)} of B's 1000, none of A's"
        )


async def test_a_departed_clients_bytes_reach_its_own_peer_within_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leaves while its peer is stalled; the peer reads again before the deadline:
    it gets every byte the server took from A, then is closed; B, which linked
    meanwhile, waits for that boundary and never sees A's peer. (Bytes A's kernel
    still held when A's session closed were never taken, so they are not A's to lose.)"""
    peer = Peer()
    server, channel = await serving(await peer.start(), drain=30.0)
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri, lz4=False) as a:
            port_a = await a.open_port(PORT)
            conn_a = await peer.accept()
            await push_until_blocked(port_a, b"A")
        left = trio.current_time()
        got_a = []
        async with trio.open_nursery() as n, connect(uri, lz4=False) as b:

            async def peer_a_reads_late() -> None:
                await trio.sleep(3)  # virtual: A's peer stalls 3 s more, then reads
                got_a.append(await read_all(conn_a))
                assert trio.current_time() - left < 30  # within the deadline

            n.start_soon(peer_a_reads_late)
            port_b = await b.open_port(PORT)  # waits for A's boundary
            assert trio.current_time() - left >= 3
            await conn_a.send(b"A's peer talks after A left")  # shown to nobody
            conn_b = await peer.accept()
            with trio.fail_after(30):  # A's peer closing is A's: B sees only its own
                assert (port_b.opened, await port_b.next_event()) == (False, PortEvent.OPENED)
            await port_b.send_all(b"B" * 10)
            with trio.fail_after(30):
                assert await conn_b.recv(100) == b"B" * 10
            await conn_b.send(b"to B")
            with trio.fail_after(30):
                assert await port_b.receive_some() == b"to B"
        assert channel.bytes_dropped == 0
        await settle(lambda: channel.device.idle)
        taken_from_a = channel.device.stats.written - 10  # all the device took, but B's
        assert got_a == [b"A" * taken_from_a] and taken_from_a > channel.device.byte_budget


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_a_peer_that_resets_costs_only_its_session(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    peer = Peer()
    server, channel = await serving(await peer.start(), drain=2.0)
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri, lz4=False) as a:
            port_a = await a.open_port(PORT)
            conn = await peer.accept()
            await port_a.send_all(b"x" * 100)
            with trio.fail_after(30):
                assert await conn.recv(100) == b"x" * 100
            if how == "rst":
                conn.setsockopt(
                    trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            conn.close()
            with trio.fail_after(30):
                while await port_a.next_event() != PortEvent.CLOSED:
                    pass  # the OPENED of the first connection
            conn2 = await peer.accept()  # the backend reconnects within the session
            with trio.fail_after(30):
                assert await port_a.next_event() == PortEvent.OPENED
            await port_a.send_all(b"y" * 10)
            with trio.fail_after(30):
                assert await conn2.recv(100) == b"y" * 10
        await settle(lambda: channel.device.idle and channel.client is None)
