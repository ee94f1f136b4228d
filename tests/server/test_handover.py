"""A handover between two trivmc servers in one trio run, over loopback and a unix
handover socket: the old server's listeners and its usbredir backend's connection to
a fake QEMU (a test TCP server that greets every connection, as usb-redir does) move
to the new server. The fake QEMU sees one connection throughout, never a close; its
greeting, kept by the old server for a client that had not come yet, reaches the
first client of the new server; and that client's bytes reach the same connection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio
import trio.testing

from trivmc.backends.stream import TcpConnectBackend
from trivmc.client import connect
from trivmc.protocol import ChannelType, MsgcVmc, MsgVmc
from trivmc.server import Server, ServerConfig
from trivmc.server.adoption import accept_handover, listen_for_handover
from trivmc.server.handover import hand_over

from .test_migration_e2e import link, main_link, settle

HELLO = b"usbredir hello from the fake QEMU"
PORT = "org.trivmc.handover.0"


class FakeQemu:
    """Accepts connections; greets each; records what each sends and whether it closed."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytearray] = []
        self.closed: list[bool] = []
        self.port = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._conn, [listener])

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

        async def take_over(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            listeners, receiver = await accept_handover(sock, new)
            new.config = dataclasses.replace(new.config, listen=[])
            await nursery.start(lambda **kw: new.serve(inherited=listeners, **kw))
            nursery.start_soon(receiver.run)
            task_status.started()

        nursery.start_soon(take_over)
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


class EchoDevice:
    """A peer that echoes what it receives; records connections and closes."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.received = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._conn, [listener])

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        while data := await stream.receive_some():
            self.received += len(data)
            await stream.send_all(data)
        self.closed += 1


async def test_a_session_moves_with_its_bytes_in_flight_exactly_once(tmp_path: Path) -> None:
    """A trivmc client keeps writing to a port whose backend echoes through a
    per-session connection; the handover happens in the middle. Everything written
    comes back exactly once and in order, through the same device connection."""
    device = EchoDevice()
    old, new = Server(config()), Server(config())
    chunks = [bytes([65 + i % 26]) * (1000 + i) for i in range(300)]
    sent = b"".join(chunks)
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        new_channel = new.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        (address,) = await nursery.start(old.serve)
        sock = await listen_for_handover(str(tmp_path / "handover"))

        async def take_over() -> None:
            listeners, receiver = await accept_handover(sock, new)
            new.config = dataclasses.replace(new.config, listen=[])
            await nursery.start(lambda **kw: new.serve(inherited=listeners, **kw))
            nursery.start_soon(receiver.run)

        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            got = bytearray()
            half = trio.Event()

            async def write() -> None:
                for i, chunk in enumerate(chunks):
                    await ch.send_all(chunk)
                    if i == len(chunks) // 3:
                        half.set()
                    await trio.sleep(0)

            async def read() -> None:
                with trio.fail_after(30):
                    while len(got) < len(sent):
                        data = await ch.receive_some()
                        assert data, f"closed after {len(got)} bytes"
                        got.extend(data)

            async with trio.open_nursery() as inner:
                inner.start_soon(write)
                inner.start_soon(read)
                await half.wait()
                inner.start_soon(take_over)
                report = await hand_over(old, str(tmp_path / "handover"))
            assert bytes(got) == sent
            assert report.outcomes == {session.session_id: "seamless"}
            assert report.peers == 1
            assert device.connections == 1 and device.closed == 0
            assert device.received == len(sent)
            assert new_channel.clients_served == 1
            print(f"handover: {report.as_dict()}")
        nursery.cancel_scope.cancel()
