"""A handover between two trivmc servers in one trio run, over loopback and a unix
handover socket: the old server's listeners and its usbredir backend's connection to
a fake QEMU (a test TCP server that greets every connection, as usb-redir does) move
to the new server. The fake QEMU sees one connection throughout, never a close; its
greeting, kept by the old server for a client that had not come yet, reaches the
first client of the new server; and that client's bytes reach the same connection."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from trivmc.backends.stream import TcpConnectBackend
from trivmc.client import connect
from trivmc.protocol import ChannelType, MsgcVmc, MsgVmc
from trivmc.server import Server, ServerConfig
from trivmc.server.adoption import (
    HandoverRefused,
    Receiver,
    accept_handover,
    listen_for_handover,
)
from trivmc.server.handover import hand_over
from trivmc.transport import fdpass

from .conftest import Peer
from .test_migration_e2e import link, main_link, port_link, settle

HELLO = b"usbredir hello from the fake QEMU"
PORT = "org.trivmc.handover.0"


class LoopbackPeer:
    """A TCP server on loopback, standing where QEMU's chardev stands."""

    port = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._conn, [listener])

    async def _conn(self, stream: trio.SocketStream) -> None:
        raise NotImplementedError


class FakeQemu(LoopbackPeer):
    """Accepts connections; greets each; records what each sends and whether it closed."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytearray] = []
        self.closed: list[bool] = []

    async def _conn(self, stream: trio.SocketStream) -> None:
        i = self.connections
        self.connections += 1
        self.received.append(bytearray())
        self.closed.append(False)
        await stream.send_all(HELLO)
        while data := await stream.receive_some():
            self.received[i] += data
        self.closed[i] = True


def config() -> ServerConfig:
    return ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=4, key_process=False)


async def take_over(
    sock: trio.socket.SocketType, new: Server, nursery: trio.Nursery, take_peers: bool = True
) -> Receiver:
    """The new server's side: take the hello at `sock`, serve the listeners it
    brought (in `nursery`), and (with `take_peers`) take the peers as they come."""
    listeners, receiver = await accept_handover(sock, new)
    new.config = dataclasses.replace(new.config, listen=[])
    await nursery.start(lambda **kw: new.serve(inherited=listeners, **kw))
    if take_peers:
        nursery.start_soon(receiver.run)
    return receiver


async def test_handover_keeps_the_qemu_connection_and_the_listener(tmp_path: Path) -> None:
    qemu = FakeQemu()
    old, new = Server(config()), Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(qemu.serve)
        old_channel = old.add_usbredir(TcpConnectBackend("127.0.0.1", qemu.port))
        new_channel = new.add_usbredir(TcpConnectBackend("127.0.0.1", qemu.port))
        (address,) = await nursery.start(old.serve)
        await settle(lambda: old_channel.chardev.fe_open)  # QEMU greeted: offered
        assert qemu.connections == 1

        sock = await listen_for_handover(str(tmp_path / "handover"))

        nursery.start_soon(take_over, sock, new, nursery)
        report = await hand_over(old, str(tmp_path / "handover"))
        assert old.handed_over.is_set()
        assert report.peers == 1 and report.listeners == 1
        assert new.addresses == [address]  # the same listening socket
        await settle(lambda: new_channel.chardev.fe_open)

        # the old server's accept loops are gone: the next client is the new server's
        main, session = await main_link(address)
        usb = await link(address, ChannelType.USBREDIR, session)
        (first,) = await usb.receive()
        assert (first.type, first.body) == (MsgVmc.DATA, HELLO)  # kept, then handed on
        await usb.send(MsgcVmc.DATA, b"after the handover")
        await settle(lambda: bytes(qemu.received[0]) == b"after the handover")
        assert qemu.connections == 1 and qemu.closed == [False]
        assert old_channel.clients_served == 0 and new_channel.clients_served == 1
        for peer in (usb, main):
            await peer.stream.aclose()
        nursery.cancel_scope.cancel()


class EchoDevice(LoopbackPeer):
    """A peer that echoes what it receives; records connections and closes. While
    `reading` is clear it reads nothing (the bytes for it pile up upstream)."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.received = 0
        self.data = bytearray()  # everything received, in order
        self.reading = trio.Event()
        self.reading.set()

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        while True:
            await self.reading.wait()
            data = await stream.receive_some(4096)
            if not data:
                break
            self.received += len(data)
            self.data += data
            await stream.send_all(data)
        self.closed += 1


@pytest.mark.parametrize("device_stalls", [False, True])
async def test_a_session_moves_with_its_bytes_in_flight_exactly_once(
    tmp_path: Path, device_stalls: bool
) -> None:
    """A trivmc client keeps writing to a port whose backend echoes through a
    per-session connection; the handover happens in the middle. Everything written
    comes back exactly once and in order, through the same device connection. With
    `device_stalls` the device reads nothing during the handover: bytes pile up in the
    old server's backend (passed with the socket, unsent) and device queue (carried
    by the client's MIGRATE_DATA)."""
    device = EchoDevice()
    old, new = Server(config()), Server(config())
    sent = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        old_channel = old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        new_channel = new.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        (address,) = await nursery.start(old.serve)
        sock = await listen_for_handover(str(tmp_path / "handover"))

        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            got = bytearray()
            started, finish, finished = trio.Event(), trio.Event(), trio.Event()

            async def write() -> None:
                """Chunks of growing size, each byte its chunk number mod 251, until
                100 chunks after `finish`."""
                i, last = 0, -1
                while last < 0 or i < last:
                    if finish.is_set() and last < 0:
                        last = i + 100
                    chunk = bytes([i % 251]) * (1000 + i % 3000)
                    await ch.send_all(chunk)
                    sent.extend(chunk)
                    i += 1
                    if i == 100:
                        started.set()
                    await trio.sleep(0)
                finished.set()

            gaps: list[float] = []  # between two reads: the longest is the move's pause

            async def read() -> None:
                last = trio.current_time()
                with trio.fail_after(60):
                    while not finished.is_set() or len(got) < len(sent):
                        data = await ch.receive_some()
                        assert data, f"closed after {len(got)} bytes"
                        got.extend(data)
                        now = trio.current_time()
                        gaps.append(now - last)
                        last = now

            async with trio.open_nursery() as inner:
                inner.start_soon(write)
                inner.start_soon(read)
                await started.wait()
                if device_stalls:  # until the kernel's buffers are full, then ours fill
                    device.reading = trio.Event()
                    await settle(lambda: old_channel.device.buffered_bytes > 0)
                inner.start_soon(take_over, sock, new, nursery)
                report = await hand_over(old, str(tmp_path / "handover"), drain=0.05)
                device.reading.set()
                finish.set()
            assert got == sent
            assert report.outcomes == {session.session_id: "seamless"}
            assert report.peers == 1
            assert device.connections == 1 and device.closed == 0
            assert device.received == len(sent)
            assert new_channel.clients_served == 1
            if device_stalls:  # there were bytes in flight, and they moved
                assert report.unsent_bytes > 0 and report.migrated_bytes > 0
            print(
                f"handover: {report.as_dict()}, {len(sent)} bytes each way,"
                f" longest pause in the echo {max(gaps) * 1e3:.1f} ms"
            )
        nursery.cancel_scope.cancel()


async def test_a_handover_to_nobody_fails_and_changes_nothing(tmp_path: Path) -> None:
    """No server waits at the path: OSError, and the old server goes on accepting."""
    old = Server(config())
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(old.serve)
        try:
            await hand_over(old, str(tmp_path / "nobody"))
        except OSError:
            pass
        else:
            raise AssertionError("a handover to nobody succeeded")
        assert not old.handed_over.is_set()
        main, session = await main_link(address)  # still accepting
        assert session
        await main.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_bad_hello_is_refused_and_closes_what_came_with_it(tmp_path: Path) -> None:
    """The new server refuses a hello that is not one (HandoverRefused) and closes
    the descriptors that came with it."""
    new = Server(config())
    sock = await listen_for_handover(str(tmp_path / "h"))
    x, y = socket.socketpair()
    async with trio.open_nursery() as nursery:

        async def old_side() -> None:
            fd = await fdpass.connect(str(tmp_path / "h"))
            await fd.send({"t": "hello", "version": 99, "listeners": [False]}, [x])
            fd.close()

        nursery.start_soon(old_side)
        with pytest.raises(HandoverRefused, match="not a handover hello"):
            await accept_handover(sock, new)
    y.settimeout(5)
    x.close()
    assert y.recv(1) == b""  # the new server's copy of x was closed too: EOF
    y.close()


async def test_a_client_that_cannot_migrate_leaves_its_queued_bytes_to_the_new_server(
    tmp_path: Path,
) -> None:
    """A client without SPICE's migration caps gets SWITCH_HOST and is disconnected;
    what its channel's device still held (the device peer was not reading) travels in
    the handover message and reaches the same device connection exactly once."""
    device = EchoDevice()
    device.reading = trio.Event()  # not reading: the bytes stay queued in the old server
    old, new = Server(config()), Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        old_channel = old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        new.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        (address,) = await nursery.start(old.serve)
        sock = await listen_for_handover(str(tmp_path / "h"))
        _main, session = await main_link(address)  # no migration caps (kept open)
        port = await port_link(address, session)
        sent = b"".join(bytes([i]) * 60000 for i in range(1, 120))  # ~7 MB
        nursery.start_soon(lambda: _send_all(port, sent))
        await settle(lambda: old_channel.device.buffered_bytes > 0 and device.connections == 1)

        nursery.start_soon(take_over, sock, new, nursery)
        report = await hand_over(old, str(tmp_path / "h"), connect_timeout=1, drain=0.05)
        assert report.outcomes == {session: "none"}  # (SWITCH_HOST)
        assert report.queued_bytes > 0
        device.reading.set()
        accepted = old_channel.device.stats.in_data
        await settle(lambda: device.received == accepted)
        assert device.data == sent[:accepted]  # in order, each byte once
        assert device.connections == 1 and device.closed == 0
        assert old_channel.bytes_dropped == 0
        nursery.cancel_scope.cancel()


async def _send_all(peer: Peer, data: bytes) -> None:
    """DATA messages of up to 60000 bytes until the server stops taking them."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for start in range(0, len(data), 60000):
            await peer.send(MsgcVmc.DATA, data[start : start + 60000])


async def test_a_session_with_two_channels_moves_both(tmp_path: Path) -> None:
    """Two channels of one session move in the same handover (their steps run
    concurrently, their peer messages share the handover socket): each keeps its own
    device connection, and both work through the new server."""
    device, qemu = EchoDevice(), FakeQemu()
    old, new = Server(config()), Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        await nursery.start(qemu.serve)
        for server in (old, new):
            server.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
            server.add_usbredir(TcpConnectBackend("127.0.0.1", qemu.port))
        (address,) = await nursery.start(old.serve)
        await settle(lambda: old.channels[(ChannelType.USBREDIR, 0)].chardev.fe_open)
        sock = await listen_for_handover(str(tmp_path / "h"))

        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            port = await session.open_port(PORT)
            usb = await session.open_usbredir()
            assert await usb.receive_some() == HELLO
            nursery.start_soon(take_over, sock, new, nursery)
            report = await hand_over(old, str(tmp_path / "h"), drain=0.05)
            assert report.outcomes == {session.session_id: "seamless"} and report.peers == 2
            await port.send_all(b"ping")
            with trio.fail_after(10):
                assert await port.receive_some() == b"ping"
            await usb.send_all(b"to the same qemu")
            await settle(lambda: bytes(qemu.received[0]) == b"to the same qemu")
        assert device.connections == 1 and device.closed == 0
        assert qemu.connections == 1 and qemu.closed == [False]
        nursery.cancel_scope.cancel()
