"""trivmc's client follows a live migration between two QEMU 7.2 processes (issue 17).

Two QEMUs on loopback, each with its own spice-server and a QMP monitor behind a
spiceport (`org.qemu.monitor.qmp.0`); the destination waits with `-incoming`. The
management QMP of the source runs `client_migrate_info`, then `migrate`. trivmc's client,
connected to the source, keeps sending `query-name` (with ids) through the SPICE port
before, during and after the move, and the test checks the answers: from the source
before the move, from the destination after it, the destination's QMP greeting first,
no id answered twice, and the ids never answered counted (docs/migration.md says how
many each path may lose). The three paths:

- semi-seamless: the move is throttled (`max-bandwidth`) so the client links to the
  destination long before it ends (MIGRATE_BEGIN, MIGRATE_END);
- seamless: `-spice ...,seamless-migration=on` on both sides (BEGIN_SEAMLESS, then
  MIGRATE with the data of each channel);
- SWITCH_HOST: the client reaches the destination through a gate (a loopback proxy
  held shut until the move completed), so the move ends before it linked.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trivmc.client import Session, connect

from .tools import LineReader, Qmp, free_port, qemu

QMP_PORT = "org.qemu.monitor.qmp.0"
INTERVAL = 0.02  # between two commands of the client
AFTER = 20  # answers from the destination to see before stopping


def vm_args(name: str, spice_port: int, seamless: bool, incoming: int | None) -> list[str]:
    spice = f"port={spice_port},addr=127.0.0.1,disable-ticketing=on"
    if seamless:
        spice += ",seamless-migration=on"
    args = [
        "-machine", "none", "-m", "64", "-name", name,
        "-spice", spice,
        "-chardev", f"spiceport,id=qmp0,name={QMP_PORT}",
        "-mon", "chardev=qmp0,mode=control",
    ]  # fmt: skip
    if incoming is not None:
        args += ["-incoming", f"tcp:127.0.0.1:{incoming}"]
    return args


@dataclass
class Pair:
    src: Qmp
    dst: Qmp
    src_spice: int
    dst_spice: int
    migration_port: int


@asynccontextmanager
async def two_vms(seamless: bool) -> AsyncIterator[Pair]:
    ports = [free_port() for _ in range(3)]
    src_args = vm_args("src", ports[0], seamless, None)
    dst_args = vm_args("dst", ports[1], seamless, ports[2])
    async with qemu(src_args) as src, qemu(dst_args) as dst:
        yield Pair(src, dst, ports[0], ports[1], ports[2])


@dataclass
class QmpTraffic:
    """The client's side: a command every INTERVAL, every line that comes back."""

    channel: trio.abc.Stream
    lines: list[dict[str, Any]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    answers: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    greetings: int = 0
    first_dst_line: int | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    outbox: tuple[trio.MemorySendChannel[bytes], trio.MemoryReceiveChannel[bytes]] = field(
        default_factory=lambda: trio.open_memory_channel[bytes](100)
    )
    stop_sending: bool = False
    answered_at: dict[int, float] = field(default_factory=dict)  # trio time, first answer
    sent_at: dict[int, float] = field(default_factory=dict)
    move_started: float = 0.0

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def reader(self) -> None:
        lines = LineReader(self.channel)  # type: ignore[arg-type]
        while True:
            line = json.loads(await lines.readline())
            self.lines.append(line)
            if "QMP" in line:
                self.greetings += 1
                await self.outbox[0].send(b'{"execute": "qmp_capabilities"}\n')
            elif isinstance(line.get("id"), int):
                self.answers.setdefault(line["id"], []).append(line)
                self.answered_at.setdefault(line["id"], trio.current_time())
                if self.first_dst_line is None and self.source_of(line) == "dst":
                    self.first_dst_line = len(self.lines) - 1
            self._wake()

    async def writer(self) -> None:
        async for data in self.outbox[1]:
            await self.channel.send_all(data)

    async def commands(self) -> None:
        n = 0
        while not self.stop_sending:
            n += 1
            self.sent.append(n)
            self.sent_at[n] = trio.current_time()
            await self.outbox[0].send(b'{"execute": "query-name", "id": %d}\n' % n)
            await trio.sleep(INTERVAL)  # pacing, not synchronisation

    @staticmethod
    def source_of(answer: dict[str, Any]) -> str | None:
        ret = answer.get("return")
        return ret.get("name") if isinstance(ret, dict) else None

    async def wait_for(self, predicate: Any, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    def from_(self, name: str) -> list[int]:
        return [i for i, a in self.answers.items() if any(self.source_of(x) == name for x in a)]

    def report(self) -> dict[str, Any]:
        lost = [i for i in self.sent if i not in self.answers]
        dup = [i for i, a in self.answers.items() if len(a) > 1]
        refused = [i for i, a in self.answers.items() if all("error" in x for x in a)]
        src, dst = self.from_("src"), self.from_("dst")
        timing: dict[str, Any] = {}
        if src and dst and self.move_started:
            last_src = max(self.answered_at[i] for i in src)
            first_dst = min(self.answered_at[i] for i in dst)
            # commands written after the source's last answer and before the
            # destination's first: in flight through the move (each answered once?)
            flight = [i for i in self.sent if last_src <= self.sent_at[i] <= first_dst]
            timing = {
                "answers_paused_ms": round((first_dst - last_src) * 1e3, 1),
                "move_start_to_first_dst_answer_ms": round(
                    (first_dst - self.move_started) * 1e3, 1
                ),
                "in_flight": len(flight),
                "in_flight_answered_once": sum(len(self.answers.get(i, [])) == 1 for i in flight),
            }
        return {
            "sent": len(self.sent),
            "src": len(self.from_("src")),
            "dst": len(self.from_("dst")),
            "lost": lost,
            "duplicated": dup,
            "refused_before_capabilities": refused,
            "greetings": self.greetings,
            **timing,
        }


async def migrate(pair: Pair, dst_spice: int, migration_port: int) -> None:
    """client_migrate_info then migrate on the source; return once QEMU says completed
    (bounded polling of the external process)."""
    await pair.src.command(
        "client_migrate_info", protocol="spice", hostname="127.0.0.1", port=dst_spice
    )
    await pair.src.command("migrate", uri=f"tcp:127.0.0.1:{migration_port}")
    with trio.fail_after(120):
        while True:
            status = (await pair.src.command("query-migrate")).get("status")
            if status == "completed":
                return
            assert status not in ("failed", "cancelled"), status
            await trio.sleep(0.05)


async def run_move(
    pair: Pair, session: Session, dst_spice: int, on_completed: Any = None
) -> QmpTraffic:
    ch = await session.open_port(QMP_PORT)
    traffic = QmpTraffic(ch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic.reader)
        nursery.start_soon(traffic.writer)
        await traffic.wait_for(lambda: traffic.greetings == 1)
        nursery.start_soon(traffic.commands)
        await traffic.wait_for(lambda: len(traffic.from_("src")) >= 10)
        moves = session.migrations
        traffic.move_started = trio.current_time()
        await migrate(pair, dst_spice, pair.migration_port)
        if on_completed is not None:
            on_completed()
        with trio.fail_after(60):
            await session.wait_migrated(moves)
        await traffic.wait_for(lambda: len(traffic.from_("dst")) >= AFTER)
        traffic.stop_sending = True
        last = traffic.sent[-1]
        with trio.move_on_after(5):  # the last answers: a bounded wait for the stragglers
            await traffic.wait_for(lambda: last in traffic.answers)
        nursery.cancel_scope.cancel()
    return traffic


def check(traffic: QmpTraffic, session: Session, max_lost: int) -> dict[str, Any]:
    report = traffic.report()
    print(f"migration ({session.last_migration}): {report}")
    assert session.migrations == 1
    assert report["duplicated"] == []
    assert len(report["lost"]) <= max_lost, report
    assert traffic.greetings == 2, report
    # the destination's greeting is the first line after the move: every answer before
    # it came from the source, every one after it from the destination (or refused
    # before its capabilities negotiation)
    second = [i for i, line in enumerate(traffic.lines) if "QMP" in line][1]
    for i, line in enumerate(traffic.lines):
        src = QmpTraffic.source_of(line)
        assert src != ("dst" if i < second else "src"), (i, second, line)
    assert report["dst"] >= AFTER
    return report


async def test_semi_seamless() -> None:
    async with two_vms(seamless=False) as pair:
        # zero pages are cheap: 64 KiB/s makes the 64 MiB move take a few seconds
        await pair.src.command("migrate-set-parameters", **{"max-bandwidth": 64 * 1024})
        async with connect(f"spice://127.0.0.1:{pair.src_spice}") as session:
            traffic = await run_move(pair, session, pair.dst_spice)
            check(traffic, session, max_lost=2)
            assert session.last_migration is not None
            assert session.last_migration.value == "semi-seamless"


async def test_seamless() -> None:
    async with two_vms(seamless=True) as pair:
        await pair.src.command("migrate-set-parameters", **{"max-bandwidth": 64 * 1024})
        async with connect(f"spice://127.0.0.1:{pair.src_spice}") as session:
            traffic = await run_move(pair, session, pair.dst_spice)
            check(traffic, session, max_lost=0)
            assert session.last_migration is not None
            assert session.last_migration.value == "seamless"


async def gate_proxy(
    listener: trio.SocketListener, target_port: int, gate: trio.Event, nursery: trio.Nursery
) -> None:
    """Accept at once, forward to `target_port` only once `gate` is set."""

    async def pipe(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
        try:
            while data := await a.receive_some(65536):
                await b.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(b)

    async def one(conn: trio.SocketStream) -> None:
        await gate.wait()
        up = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as n:
            n.start_soon(pipe, conn, up)
            n.start_soon(pipe, up, conn)

    while True:
        conn = await listener.accept()
        nursery.start_soon(one, conn)


async def test_switch_host() -> None:
    async with two_vms(seamless=False) as pair, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        proxy_port = listeners[0].socket.getsockname()[1]
        gate = trio.Event()
        nursery.start_soon(
            functools.partial(gate_proxy, listeners[0], pair.dst_spice, gate, nursery)
        )
        async with connect(f"spice://127.0.0.1:{pair.src_spice}") as session:
            traffic = await run_move(pair, session, proxy_port, on_completed=gate.set)
            check(traffic, session, max_lost=2)
            assert session.last_migration is not None
            assert session.last_migration.value == "switch-host"
        nursery.cancel_scope.cancel()


async def test_trivmc_connect_follows_a_move() -> None:
    """`trivmc connect` (stdin/stdout) across a semi-seamless move: the same pipe goes
    on with the destination's monitor."""
    async with two_vms(seamless=False) as pair:
        await pair.src.command("migrate-set-parameters", **{"max-bandwidth": 64 * 1024})
        uri = f"spice://127.0.0.1:{pair.src_spice}"
        cmd = [sys.executable, "-m", "trivmc", "connect", uri, "--port", QMP_PORT]
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            traffic = QmpTraffic(trio.StapledStream(proc.stdin, proc.stdout))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic.reader)
                nursery.start_soon(traffic.writer)
                await traffic.wait_for(lambda: traffic.greetings == 1)
                nursery.start_soon(traffic.commands)
                await traffic.wait_for(lambda: len(traffic.from_("src")) >= 10)
                traffic.move_started = trio.current_time()
                await migrate(pair, pair.dst_spice, pair.migration_port)
                await traffic.wait_for(lambda: len(traffic.from_("dst")) >= AFTER)
                traffic.stop_sending = True
                last = traffic.sent[-1]
                with trio.move_on_after(5):  # a bounded wait for the last answers
                    await traffic.wait_for(lambda: last in traffic.answers)
                nursery.cancel_scope.cancel()
        finally:
            proc.kill()
            await proc.wait()
        report = traffic.report()
        print(f"trivmc connect across a move: {report}")
        assert report["duplicated"] == [] and traffic.greetings == 2
        assert len(report["lost"]) <= 2 and report["dst"] >= AFTER
