"""spice-gtk (the real client) follows a move between two trivmc servers: it links main
and a port to A, echoes through it, A moves the session to B
(`Server.migrate_sessions`), and the same port keeps echoing, now through B. Seamless,
and semi-seamless (`seamless=False`, QEMU's default: MIGRATE_BEGIN, then MIGRATE_END,
which B answers with MAIN_INIT). spice-gtk's own log (SPICE_DEBUG=1) is shown when
something fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from trivmc.backends import EchoBackend
from trivmc.protocol import MigrationDstInfo
from trivmc.server import MigrationOutcome, Server, ServerConfig, VmcChannel

from .tools import LineReader, gtk_process, require_gtk

HERE = Path(__file__).resolve().parent
PORT = "org.trivmc.gtkmig.0"


def config() -> ServerConfig:
    return ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, key_process=False)


class Events:
    """spice-gtk's stdout, read all the time: JSON lines are events, the rest (GLib
    writes debug messages to stdout) goes to the log file with its stderr."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen: list[dict[str, Any]] = []
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](1000)

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        lines = LineReader(stream)
        with self._send:
            while True:
                try:
                    raw = await lines.readline()
                except EOFError:
                    return
                if not raw.startswith(b"{"):
                    with self.log.open("ab") as f:
                        f.write(raw)
                    continue
                obj: dict[str, Any] = json.loads(raw)
                self.seen.append(obj)
                self._send.send_nowait(obj)

    async def next(self, name: str) -> dict[str, Any]:
        """The next event `name` (the ones before it are in `seen`)."""
        with trio.fail_after(30):
            async for obj in self._receive:
                if obj["event"] == name:
                    return obj
        raise AssertionError(f"spice-gtk ended; seen {self.seen}; log:\n{tail(self.log)}")


def tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-80:])


@pytest.mark.parametrize("seamless", [True, False], ids=["seamless", "semi-seamless"])
async def test_spice_gtk_follows_a_move_between_two_trivmc_servers(
    tmp_path: Path, seamless: bool
) -> None:
    require_gtk()
    a, b = Server(config()), Server(config())
    a_channel = a.add_port(PORT, EchoBackend())
    b_channel = b.add_port(PORT, EchoBackend())
    log = tmp_path / "spice-gtk.log"
    with log.open("wb") as err:  # spice-gtk's stderr (its SPICE_DEBUG log)
        await _follow(a, b, a_channel, b_channel, log, err, seamless)


async def _follow(
    a: Server,
    b: Server,
    a_channel: VmcChannel,
    b_channel: VmcChannel,
    log: Path,
    err: IO[bytes],
    seamless: bool,
) -> None:
    kind = MigrationOutcome.SEAMLESS if seamless else MigrationOutcome.SEMI_SEAMLESS
    async with a as a_addrs, b as b_addrs, trio.open_nursery() as nursery:
        a_host, a_port = a_addrs[0]  # type: ignore[misc]
        b_host, b_port = b_addrs[0]  # type: ignore[misc]
        uri = f"spice://{a_host}:{a_port}"
        gtk = gtk_process(
            uri, PORT, script=HERE / "gtk_migrate.py", stderr=err, env={"SPICE_DEBUG": "1"}
        )
        async with gtk as proc:
            assert proc.stdin is not None and proc.stdout is not None
            events = Events(log)
            nursery.start_soon(events.read, proc.stdout)
            seen = events.seen
            opened = await events.next("opened")
            assert opened["port_name"] == PORT
            await proc.stdin.send_all(b"echo 200000\n")
            assert (await events.next("echoed"))["ok"] is True
            assert a_channel.device.stats.in_data == 200000

            (session,) = a.sessions
            sid = session.connection_id
            b.expect_migration(sid)
            dst = MigrationDstInfo(port=b_port, sport=0, host=str(b_host).encode())
            with trio.fail_after(30):
                outcomes = await a.migrate_sessions(
                    dst, connect_timeout=10, leave_timeout=1, seamless=seamless
                )
            assert outcomes == {sid: kind}, tail(log)
            with trio.move_on_after(30):
                while b.migrations_in[kind] != 1 or len(a.sessions):
                    await trio.sleep(0.01)
            assert b.migrations_in == {kind: 1}, (seen, tail(log))
            assert not len(a.sessions), (seen, tail(log))
            assert b.sessions.get(sid) is not None

            await proc.stdin.send_all(b"echo 300000\n")
            assert (await events.next("echoed"))["ok"] is True, tail(log)
            assert b_channel.device.stats.in_data == 300000  # the echo went through B
            assert a_channel.device.stats.in_data == 200000
            await proc.stdin.send_all(b"quit\n")
            with trio.fail_after(30):
                await proc.wait()
            assert proc.returncode == 0, tail(log)
    print("spice-gtk events:", seen)
    assert not [e for e in seen if e["event"] == "channel-event" and e["name"] != "opened"], seen
    states = [e["state"] for e in seen if e["event"] == "migration-state"]
    assert states and states[-1] == 0, seen  # SPICE_SESSION_MIGRATION_NONE at the end
    assert a.migrations_out == {kind: 1}
