"""The control socket driven by the real `qemu.qmp` client (and raw sockets for abuse):
QEMU's commands and events in QEMU's shapes, tickets that rotate, channels and sessions
at run time, and control clients that misbehave costing only their own connection."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from qemu.qmp import EventListener, ExecuteError, QMPClient

from trivmc.backends import EchoBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.control import ControlAddress, ControlServer, parse_control_address
from trivmc.control.client import control_client
from trivmc.control.listener import ControlConnection
from trivmc.protocol import ChannelType, LinkError
from trivmc.server import Server, ServerConfig

from ..server.test_bad_input import settle
from .bridge import AsyncioThread

ECHO = "org.trivmc.echo.0"


@asynccontextmanager
async def controlled(
    tmp_path: Path, password: str | None = None, max_events: int = 10_000, multi: bool = False
) -> AsyncIterator[tuple[Server, str, str]]:
    """A server with an echo port and its control socket: (server, uri, socket path)."""
    cfg = ServerConfig(
        listen=[("127.0.0.1", 0)],
        key_pool_size=8,
        key_process=False,
        password=password,
        multi_session=multi,
    )
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    path = str(tmp_path / "control.sock")
    async with server as addrs, trio.open_nursery() as nursery:
        ctl = ControlServer(
            server, ControlAddress(path=path), version="0.1.0", max_events=max_events
        )
        await nursery.start(ctl.serve)
        yield server, f"spice://127.0.0.1:{addrs[0][1]}", path  # type: ignore[index]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def qmp_client(aio: AsyncioThread, path: str) -> AsyncIterator[QMPClient]:
    qmp = QMPClient("trivmc-test")
    await aio.run(qmp.connect(path))
    try:
        yield qmp
    finally:
        await aio.run(qmp.disconnect())


async def execute(aio: AsyncioThread, qmp: QMPClient, cmd: str, **args: Any) -> Any:
    return await aio.run(qmp.execute(cmd, args or None))


async def next_events(aio: AsyncioThread, listener: EventListener, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        msg = await aio.run(listener.get())
        out.append(dict(msg))
    return out


async def test_qemu_qmp_runs_query_spice_and_sees_the_spice_events(tmp_path: Path) -> None:
    with AsyncioThread() as aio:
        async with controlled(tmp_path) as (server, uri, path), qmp_client(aio, path) as qmp:
            assert qmp.greeting is not None  # qemu.qmp checked the greeting's shape
            version = await execute(aio, qmp, "query-version")
            assert version["qemu"] == {"major": 0, "minor": 1, "micro": 0}
            names = {c["name"] for c in await execute(aio, qmp, "query-commands")}
            assert {"set_password", "expire_password", "query-spice", "add-channel"} <= names
            listener = EventListener()
            qmp.register_listener(listener)
            async with connect(uri) as session:
                port = await session.open_port(ECHO)
                events = await next_events(aio, listener, 4)
                assert [e["event"] for e in events] == [
                    "SPICE_CONNECTED", "SPICE_INITIALIZED", "SPICE_CONNECTED", "SPICE_INITIALIZED",
                ]  # fmt: skip
                main_init, port_init = events[1]["data"], events[3]["data"]
                assert main_init["server"]["auth"] == "none"
                assert main_init["server"]["family"] == "ipv4"
                assert main_init["client"]["connection-id"] == session.session_id
                assert main_init["client"]["channel-type"] == ChannelType.MAIN
                assert port_init["client"]["channel-type"] == ChannelType.PORT
                assert port_init["client"]["tls"] is False
                assert events[0]["data"]["client"]["port"] == main_init["client"]["port"]
                spice = await execute(aio, qmp, "query-spice")
                assert spice["enabled"] is True and spice["auth"] == "none"
                assert spice["port"] == int(uri.rsplit(":", 1)[1]) and spice["host"] == "127.0.0.1"
                linked = sorted((c["channel-type"], c["connection-id"]) for c in spice["channels"])
                assert linked == [(1, session.session_id), (10, session.session_id)]
                await port.send_all(b"x" * 5000)
                assert await port.receive_some(5000)
                await settle(lambda: server.channels[(10, 0)].device.stats.written >= 5000)
                (echo,) = [c for c in await execute(aio, qmp, "query-channels")]
                counters = echo["counters"]  # DATA or, with LZ4, COMPRESSED_DATA
                assert echo["name"] == ECHO and counters["written"] == 5000
                assert counters["in-data"] + counters["in-decompressed"] == 5000
                assert echo["client"]["connection-id"] == session.session_id
                (sess,) = await execute(aio, qmp, "query-sessions")
                assert sess["connection-id"] == session.session_id and len(sess["channels"]) == 2
            gone = await next_events(aio, listener, 2)
            assert [e["event"] for e in gone] == ["SPICE_DISCONNECTED"] * 2
            assert (await execute(aio, qmp, "query-spice"))["channels"] == []


async def test_bad_commands_get_qmp_errors_and_the_connection_goes_on(tmp_path: Path) -> None:
    with AsyncioThread() as aio:
        async with controlled(tmp_path) as (_server, _uri, path), qmp_client(aio, path) as qmp:
            cases = [
                ("nosuch", {}, "CommandNotFound", "The command nosuch has not been found"),
                ("set_password", {"password": "x"}, "GenericError", "'protocol' is missing"),
                ("set_password", {"protocol": "vnc2", "password": "x"}, "GenericError",
                 "does not accept value 'vnc2'"),
                ("expire_password", {"protocol": "spice", "time": "bogus"}, "GenericError",
                 "'time' does not accept value 'bogus'"),
                ("add-channel", {"type": "port", "backend": "nosuch:"}, "GenericError",
                 "bad backend"),
                ("remove-channel", {"name": "org.none"}, "GenericError", "no channel named"),
                ("disconnect-session", {"connection-id": "7"}, "GenericError", "expects int"),
                ("query-spice", {"extra": 1}, "GenericError", "'extra' is unexpected"),
            ]  # fmt: skip
            for cmd, args, cls, text in cases:
                with pytest.raises(ExecuteError) as info:
                    await aio.run(qmp.execute(cmd, args))
                err = info.value.error.error
                assert err.class_ == cls and text in err.desc, cmd
            assert (await execute(aio, qmp, "query-spice"))["enabled"] is True


async def test_tickets_set_expire_and_disconnect_at_run_time(tmp_path: Path) -> None:
    async with controlled(tmp_path, password="first", multi=True) as (server, uri, path):
        async with control_client(path) as ctl:
            async with connect(uri, "first") as old:
                with pytest.raises(Exception, match="Could not set password"):
                    await ctl.execute(
                        "set_password",
                        {"protocol": "spice", "password": "second", "connected": "fail"},
                    )
                await ctl.execute("set_password", {"protocol": "spice", "password": "second"})
                assert not old.closed  # connected=keep
                with pytest.raises(SpiceLinkError) as refused:
                    async with connect(uri, "first"):
                        pass
                assert refused.value.code == LinkError.PERMISSION_DENIED
                async with connect(uri, "second"):
                    pass
                await ctl.execute("expire_password", {"protocol": "spice", "time": "now"})
                with pytest.raises(SpiceLinkError) as expired:
                    async with connect(uri, "second"):
                        pass
                assert expired.value.code == LinkError.PERMISSION_DENIED
                await ctl.execute("set_password", {"protocol": "spice", "password": "third"})
                with pytest.raises(SpiceLinkError):  # QEMU keeps the expiry across set_password
                    async with connect(uri, "third"):
                        pass
                await ctl.execute("expire_password", {"protocol": "spice", "time": "+3600"})
                async with connect(uri, "third"):
                    pass
                assert not old.closed
                await ctl.execute(
                    "set_password",
                    {"protocol": "spice", "password": "fourth", "connected": "disconnect"},
                )
                with trio.fail_after(10):
                    while not old.closed:
                        await trio.sleep(0.01)  # the session's main-channel task sees EOF
                assert len(server.sessions) == 0
            assert (await ctl.execute("query-spice"))["auth"] == "spice"


async def test_channels_and_sessions_from_the_control_socket(tmp_path: Path) -> None:
    async with controlled(tmp_path) as (server, uri, path), control_client(path) as ctl:
        async with connect(uri) as session:
            added = await ctl.execute(
                "add-channel", {"type": "port", "name": "org.added.0", "backend": "echo"}
            )
            assert added["label"] == "port:1 (org.added.0)"
            with trio.fail_after(10):
                await session.wait_channel(ChannelType.PORT, 1)
            port = await session.open_port("org.added.0")
            await port.send_all(b"hello")
            assert await port.receive_some() == b"hello"
            await ctl.execute("remove-channel", {"name": "org.added.0"})
            assert await port.receive_some() == b""  # the server closed it
            assert (1 if (ChannelType.PORT, 1) in server.channels else 0) == 0
            await ctl.execute("disconnect-session", {"connection-id": session.session_id})
            with trio.fail_after(10):
                while not session.closed:
                    await trio.sleep(0.01)
        with pytest.raises(Exception, match="no session"):
            await ctl.execute("disconnect-session", {"connection-id": 12345})


async def raw_control(path: str) -> trio.SocketStream:
    stream = await trio.open_unix_socket(path)
    greeting = await stream.receive_some()
    assert b'"QMP"' in greeting
    return stream


async def read_reply(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\r\n"):
            data += await stream.receive_some()
    return dict(json.loads(data.split(b"\r\n")[0]))


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """What arrives until the server closes (a reset, with unread input, included)."""
    got = b""
    with trio.fail_after(10):
        try:
            while data := await stream.receive_some():
                got += data
        except trio.BrokenResourceError:
            pass
    return got


async def test_misbehaving_control_clients_cost_only_their_connection(tmp_path: Path) -> None:
    async with controlled(tmp_path) as (_server, uri, path):
        first = await raw_control(path)
        await first.send_all(b'{"execute": "query-spice"}')
        assert (await read_reply(first))["error"]["class"] == "CommandNotFound"  # no negotiation
        await first.send_all(b"[1, 2]\n")
        assert (await read_reply(first))["error"]["desc"] == "QMP input must be a JSON object"
        await first.send_all(b'{"execute": "qmp_capabilities", "id": 1, "bogus": 2}\n')
        reply = await read_reply(first)
        assert reply["id"] == 1 and "'bogus' is unexpected" in reply["error"]["desc"]
        try:
            await first.send_all(b'{"execute": "x", "arguments": "' + b"a" * (2 << 20))
        except trio.BrokenResourceError:
            pass  # closed before it all went
        await read_to_end(first)  # past the bound: closed
        async with control_client(path) as ctl:  # and the socket serves the next one
            assert (await ctl.execute("query-spice"))["enabled"] is True
        async with connect(uri) as session:  # and the SPICE server is untouched
            await session.open_port(ECHO)


def test_the_control_socket_is_for_loopback_only() -> None:
    assert parse_control_address("tcp:127.0.0.1:4444").port == 4444
    assert parse_control_address("tcp:[::1]:4444").host == "::1"
    assert parse_control_address("unix:/run/x.sock").path == "/run/x.sock"
    for bad in ("tcp:0.0.0.0:4444", "tcp:192.168.1.2:1", "tcp:example.com:1", "udp:x", "tcp:1"):
        with pytest.raises(ValueError):
            parse_control_address(bad)


async def test_trivmc_ctl_and_status_commands(tmp_path: Path) -> None:
    async with controlled(tmp_path) as (_server, uri, path):
        async with connect(uri) as session:
            port = await session.open_port(ECHO)
            await port.send_all(b"y" * 1000)
            await port.receive_some()
            ctl = [sys.executable, "-m", "trivmc", "ctl", path]
            done = await trio.run_process([*ctl, "query-spice"], capture_stdout=True)
            assert len(json.loads(done.stdout)["channels"]) == 2
            done = await trio.run_process(
                [*ctl, "add-channel", "type=port", "name=org.ctl.0", "backend=null"],
                capture_stdout=True,
            )
            assert json.loads(done.stdout)["label"] == "port:1 (org.ctl.0)"
            bad = await trio.run_process(
                [*ctl, "disconnect-session", "connection-id:=1"], capture_stderr=True, check=False
            )
            assert bad.returncode == 1 and b"no session" in bad.stderr
            status = await trio.run_process(
                [sys.executable, "-m", "trivmc", "status", path, "--interval", "0.2"],
                capture_stdout=True,
            )
            screen = status.stdout.decode()
            assert "port:0 (org.trivmc.echo.0)" in screen and "port:1 (org.ctl.0)" in screen
            assert "sessions 1" in screen
    gone = await trio.run_process(
        [sys.executable, "-m", "trivmc", "ctl", path, "query-spice"],
        capture_stderr=True,
        check=False,
    )
    assert gone.returncode == 2 and b"cannot use the control socket" in gone.stderr


async def test_qmp_shell_drives_the_control_socket(tmp_path: Path) -> None:
    """qemu.qmp's own qmp-shell, unchanged, with commands on its stdin."""
    async with controlled(tmp_path) as (server, _uri, path):
        commands = b"query-spice\nadd-channel type=port name=org.shell.0 backend=echo\n"
        done = await trio.run_process(
            [sys.executable, "-m", "qemu.qmp.qmp_shell", path],
            stdin=commands,
            capture_stdout=True,
            capture_stderr=True,
        )
        out = done.stdout.decode()
        replies = [json.loads(ln.split(") ", 1)[1]) for ln in out.splitlines() if ') {"' in ln]
        assert replies[0]["return"]["enabled"] is True, out
        assert replies[1]["return"]["label"] == "port:1 (org.shell.0)", out
        assert (int(ChannelType.PORT), 1) in server.channels


async def test_a_control_client_that_never_reads_its_events_is_closed() -> None:
    """Its writer blocks (a lockstep stream: nothing is sent until read), events pile
    up to max_events, then the connection ends; the server's event list is left."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_process=False))
    owner = ControlServer(server, ControlAddress(path="unused"), max_events=4)
    near, far = trio.testing.lockstep_stream_pair()
    connection = ControlConnection(owner, far)
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def serve() -> None:
            await connection.run()
            done.set()

        nursery.start_soon(serve)
        assert b'"QMP"' in await near.receive_some()
        await near.send_all(b'{"execute": "qmp_capabilities"}')
        assert json.loads(await near.receive_some()) == {"return": {}}
        for i in range(10):  # never read
            server.events.emit("SPICE_CONNECTED", {"n": i})
        with trio.fail_after(10):
            await done.wait()
        assert server.events._listeners == []


async def test_the_unix_control_socket_is_for_its_owner_only(tmp_path: Path) -> None:
    async with controlled(tmp_path) as (_server, _uri, path):
        mode = Path(path).stat().st_mode & 0o777
    assert mode & 0o077 == 0, oct(mode)
