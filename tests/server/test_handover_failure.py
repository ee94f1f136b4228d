"""A handover that breaks off: the new process dies after its `ready`, or after it took
the first peer. The old server takes back what is still here and goes on serving: it
accepts again, a session not told to move yet goes on (MIGRATE_CANCEL) with the same
device connection, backend peers it still holds are read again, a peer that went to
the dead process is replaced by a new one, and a listening backend accepts again."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from trivmc.backends.listening import TcpListenBackend
from trivmc.backends.stream import TcpConnectBackend
from trivmc.client import connect
from trivmc.protocol import LinkError
from trivmc.server import Server
from trivmc.server.adoption import listen_for_handover
from trivmc.server.handover import HandoverFailed, hand_over
from trivmc.transport import fdpass

from .test_handover import PORT, EchoDevice, FakeQemu, config, take_over
from .test_migration_e2e import main_link, settle

NewSide = Callable[[fdpass.FdChannel], Awaitable[None]]


async def dies_after_ready(fd: fdpass.FdChannel) -> None:
    await fd.send({"t": "ready"})


async def dies_after_the_first_peer(fd: fdpass.FdChannel) -> None:
    await fd.send({"t": "ready"})
    msg, socks = await fd.receive()
    assert msg["t"] == "peer" and len(socks) == 1
    for name in ("unsent", "early", "queued"):
        await fd.receive_bytes(msg.get(name, 0), 1 << 24)
    for sock in socks:
        sock.close()  # (the process died: the peer's connection closes)


DIED: list[float] = []  # when the last dying new server died (trio time)


async def a_dying_new_server(sock: trio.socket.SocketType, behave: NewSide) -> None:
    """Take the hello (closing the listeners it brings), play `behave`, then die."""
    conn, _ = await sock.accept()
    sock.close()
    fd = fdpass.FdChannel(conn)
    try:
        msg, socks = await fd.receive()
        assert msg["t"] == "hello"
        for s in socks:
            s.close()
        await behave(fd)
    finally:
        fd.close()
        DIED[:] = [trio.current_time()]


async def echo_once(ch: trio.abc.Stream, data: bytes) -> None:
    await ch.send_all(data)
    got = b""
    with trio.fail_after(10):
        while len(got) < len(data):
            got += await ch.receive_some()
    assert got == data


async def test_a_new_server_dying_after_ready_leaves_the_old_one_serving(tmp_path: Path) -> None:
    device, qemu = EchoDevice(), FakeQemu()
    old = Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        await nursery.start(qemu.serve)
        port = old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        usb = old.add_usbredir(TcpConnectBackend("127.0.0.1", qemu.port))
        listening = TcpListenBackend("127.0.0.1", 0)
        old.add_webdav(listening)
        (address,) = await nursery.start(old.serve)
        await settle(lambda: usb.chardev.fe_open and listening.bound is not None)
        sock = await listen_for_handover(str(tmp_path / "h"))
        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            await echo_once(ch, b"before")
            nursery.start_soon(a_dying_new_server, sock, dies_after_ready)
            with pytest.raises(HandoverFailed, match="goes on serving"):
                await hand_over(old, str(tmp_path / "h"), connect_timeout=5)
            back = trio.current_time()
            assert not old.handed_over.is_set()
            # the client's link to its destination reaches this server, which refuses
            # it (it must not replace the session); the client stays where it is
            refused = old.links_refused_by
            await settle(
                lambda: refused[LinkError.BAD_CONNECTION_ID] == 1 and session._target is None
            )
            assert old.sessions.get(session.session_id) is not None
            # the session was not told to move: it goes on, through the same connection
            await echo_once(ch, b"after the failed handover")
            print(
                f"failed handover: serving again {(back - DIED[0]) * 1e3:.1f} ms after the"
                f" new server died, the session's echo after"
                f" {(trio.current_time() - DIED[0]) * 1e3:.1f} ms"
            )
            assert session.migrations == 0
            assert device.connections == 1 and device.closed == 0
            assert port.bytes_dropped == 0 and port.device.buffered_bytes == 0
        # the usbredir peer was never let go: the same connection, read again
        assert qemu.connections == 1 and qemu.closed == [False]
        assert not usb.backend.released and usb.chardev.fe_open  # type: ignore[attr-defined]
        # the listening backend accepts again, and so does the server
        assert listening.bound is not None
        peer = await trio.open_tcp_stream(*listening.bound)
        await settle(lambda: listening.peer is not None)
        main, sid = await main_link(address)
        assert sid
        for s in (peer, main.stream):
            await s.aclose()
        nursery.cancel_scope.cancel()


async def test_a_peer_that_went_to_a_dead_server_is_replaced(tmp_path: Path) -> None:
    """No session: the peers go one by one in `finish`. The first goes to the new
    process, which dies with it (its connection closes); the old server connects a new
    one. The other backend's peer, if it was not sent yet, is read again."""
    first, second = FakeQemu(), FakeQemu()
    old = Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        await nursery.start(second.serve)
        a = old.add_usbredir(TcpConnectBackend("127.0.0.1", first.port))
        b = old.add_usbredir(TcpConnectBackend("127.0.0.1", second.port))
        (address,) = await nursery.start(old.serve)
        await settle(lambda: a.chardev.fe_open and b.chardev.fe_open)
        sock = await listen_for_handover(str(tmp_path / "h"))
        nursery.start_soon(a_dying_new_server, sock, dies_after_the_first_peer)
        with pytest.raises(HandoverFailed, match="goes on serving"):
            await hand_over(old, str(tmp_path / "h"), drain=0.05)
        # the first peer went with the dead process; a new one is connected
        await settle(lambda: first.connections == 2 and a.chardev.fe_open)
        assert first.closed[0] and not first.closed[1]
        for qemu, channel in ((first, a), (second, b)):
            await settle(lambda q=qemu, c=channel: c.backend.peer is not None)  # type: ignore[misc]
            assert not qemu.closed[-1]
        main, sid = await main_link(address)  # accepting again
        assert sid
        await main.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_the_control_command_reports_a_failed_handover(tmp_path: Path) -> None:
    """`handover` through the control socket: an error answer, and the server is
    not marked done (`trivmc serve` goes on)."""
    from trivmc.control.commands import CommandError, Commands

    old = Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(old.serve)
        sock = await listen_for_handover(str(tmp_path / "h"))
        nursery.start_soon(a_dying_new_server, sock, dies_after_ready)
        commands = Commands(old, (0, 1, 0), "trivmc")
        with pytest.raises(CommandError, match="failed"):
            await commands.handover({"to": str(tmp_path / "h")})
        assert commands.after_reply is None and not old.done.is_set()
        nursery.cancel_scope.cancel()


class RacingListener:
    """A listener whose first accept returns only after the backend's listener was
    released: a handover's hello that runs just as a peer connects."""

    def __init__(self, inner: trio.SocketListener, backend: TcpListenBackend) -> None:
        self.inner, self.backend = inner, backend
        self.socket = inner.socket
        self.raced = False

    async def accept(self) -> trio.SocketStream:
        stream = await self.inner.accept()
        if not self.raced:
            self.raced = True
            assert self.backend.release_listener() is not None  # (a dup, closed here)
        return stream

    async def __aenter__(self) -> RacingListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.aclose()


class RacingTcpListen(TcpListenBackend):
    async def open_listener(self) -> trio.SocketListener:
        inner = await super().open_listener()
        return RacingListener(inner, self)  # type: ignore[return-value]


async def test_a_peer_accepted_as_the_listener_is_released_goes_with_the_handover() -> None:
    """The peer accepted in that moment is bridged, not closed: `release_peer` hands
    its connection on, still open."""
    backend = RacingTcpListen("127.0.0.1", 0)
    server = Server(config())
    server.add_webdav(backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        await backend.listening.wait()
        assert backend.bound is not None
        peer = await trio.open_tcp_stream(*backend.bound)
        await settle(lambda: backend.peer is not None)  # bridged, after the release
        assert backend.released
        handed = await backend.release_peer(0.05)
        assert handed is not None
        handed.sock.sendall(b"still connected")
        with trio.fail_after(10):
            assert await peer.receive_some() == b"still connected"
        handed.close()
        await peer.aclose()
        nursery.cancel_scope.cancel()


async def test_a_cancelled_handover_rolls_back(tmp_path: Path) -> None:
    """The caller cancels the handover while the sessions move (the new side took
    the hello and says nothing more): the old server serves as before."""
    device = EchoDevice()
    old = Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        (address,) = await nursery.start(old.serve)
        path = tmp_path / "h"
        sock = await listen_for_handover(str(path))

        async def silent(fd: fdpass.FdChannel) -> None:
            await fd.send({"t": "ready"})
            await trio.sleep_forever()

        nursery.start_soon(a_dying_new_server, sock, silent)
        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            await echo_once(ch, b"before")
            with trio.CancelScope() as scope:
                nursery.start_soon(lambda: settle_then_cancel(old, session.session_id, scope))
                await hand_over(old, str(path), connect_timeout=30)
            assert scope.cancelled_caught and not old.handed_over.is_set()
            await settle(lambda: session._target is None)  # its link was refused
            await echo_once(ch, b"after the cancelled handover")
            assert device.connections == 1 and device.closed == 0
        main, sid = await main_link(address)  # accepting again
        assert sid
        await main.stream.aclose()
        nursery.cancel_scope.cancel()


async def settle_then_cancel(server: Server, session_id: int, scope: trio.CancelScope) -> None:
    """Cancel `scope` once the session was told to migrate."""
    await settle(
        lambda: (s := server.sessions.get(session_id)) is not None and s.leaving_until > 0
    )
    scope.cancel()


async def test_a_new_server_dying_with_a_moved_session_leaves_nothing_held(
    tmp_path: Path,
) -> None:
    """A real new server takes the session (the client moves to it seamlessly) and
    dies as the device peer reaches it. The old server closes the session it had told
    to move, its device ends idle (every token back, no byte held), and the next
    client gets a new device connection."""
    device = EchoDevice()
    old, new = Server(config()), Server(config())
    async with trio.open_nursery() as nursery:
        await nursery.start(device.serve)
        channel = old.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        new.add_port(PORT, TcpConnectBackend("127.0.0.1", device.port))
        (address,) = await nursery.start(old.serve)
        sock = await listen_for_handover(str(tmp_path / "h"))
        new_scope = trio.CancelScope()

        async def new_server_that_dies() -> None:
            with new_scope:
                async with trio.open_nursery() as inner:
                    receiver = await take_over(sock, new, inner, take_peers=False)

                    async def die(msg: object, socks: list[socket.socket]) -> None:
                        for s in socks:
                            s.close()  # (with the process: the peer's connection closes)
                        new_scope.cancel()

                    receiver._peer = die  # type: ignore[method-assign]
                    inner.start_soon(receiver.run)

        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            await echo_once(ch, b"before")
            nursery.start_soon(new_server_that_dies)
            with pytest.raises(HandoverFailed, match=r"1 sessions told to move were closed"):
                await hand_over(old, str(tmp_path / "h"), drain=0.05)
        await settle(lambda: not len(old.sessions) and channel.client is None)
        await settle(lambda: channel.device.idle)
        assert device.connections == 1 and device.closed == 1  # the peer that went
        async with connect(f"spice://{address[0]}:{address[1]}") as session:
            ch = await session.open_port(PORT)
            await echo_once(ch, b"a new session, a new device connection")
        assert device.connections == 2
        nursery.cancel_scope.cancel()
