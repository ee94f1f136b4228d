"""Soak test under faults: `nox -s soak` (1000 port sessions, 60 s), or

    python -m benchmarks.soak [--duration S] [--sessions N] [--rounds R] [--seed X] ...

One server process runs ceil(N / 250) trivmc SPICE servers of up to 250 port channels
each (a SPICE channel id is one byte) in one trio run (`soak_server.py`); each port's
backend is `tcp:127.0.0.1:PORT,reconnect=...` to a port of its own on the echo peer
(`soak_peer.py`, its own process). This driver links N sessions (main + port channel,
trivmc's client), each streaming a pattern that says whose and which every byte is
(`soak_client.py`), and, for `--duration` seconds, injects faults on random sessions:
clients that reset in the middle of a message, clients that leave, backends that stall
and come back, backend connections the peer drops. Faulted sessions are replaced by
fresh ones on the same channel, so N stay live. Then every session stops sending and
must get back every byte it sent (a faulted one: up to its fault), all leave, and the
server must report every counter idle.

It exits 0 when: no byte came back wrong, twice, out of order or not at all (for every
session not faulted); nothing else failed (links, unexpected closes); server RSS did
not grow over the rounds (see `rss_verdict`); every counter in
`soak_server.idle_counters` is back to idle; the server logged no error and is still
running. It prints a one-screen summary either way, and exits 1 when the server failed
a check, 2 when the soak itself broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .procs import ROOT, rss_kib
from .soak_client import DROP_MODES, FAULTS, Load, Settings, Stats
from .soak_common import LineReader, raise_nofile_limit

EXIT_FAIL = 1  # the server failed a check
EXIT_BROKE = 2  # the soak itself failed (or its arguments were wrong)
START_TIMEOUT = 120.0  # for a child process to say it is ready
ASK_TIMEOUT = 30.0  # for a child's answer to a command
IDLE_TIMEOUT = 20.0  # for the server's counters to come back to idle
STOP_TIMEOUT = 10.0  # for a child to exit once its stdin closed (then terminate, kill)
SHOWN_PROBLEMS = 10  # session problems listed in the summary
EXCEPTION_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt)\w*: ")


class Child:
    """A child process driven by line commands on stdin, answering on stdout."""

    def __init__(self, proc: trio.Process, log: Path) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.log = log
        self._stdin = proc.stdin
        self._lines = LineReader(proc.stdout)
        self._send_lock = trio.Lock()
        self._ask_lock = trio.Lock()

    async def command(self, line: str) -> None:
        async with self._send_lock:
            await self._stdin.send_all(line.encode() + b"\n")

    async def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line, which must start with `prefix`."""
        with trio.fail_after(timeout):
            line = await self._lines.readline()
        if line is None or not line.startswith(prefix):
            raise RuntimeError(f"{self.log.stem}: expected {prefix!r}, got {line!r}")
        return line[len(prefix) :]

    async def ask(self, line: str, timeout: float = ASK_TIMEOUT) -> dict[str, Any]:
        """Send a command, return its one-line JSON answer."""
        async with self._ask_lock:
            await self.command(line)
            answer: dict[str, Any] = json.loads(await self.expect("", timeout))
            return answer


@contextlib.asynccontextmanager
async def child(cmd: list[str], log: Path) -> AsyncIterator[Child]:
    """Run `cmd` (stderr to `log`) for the block; then close its stdin (it exits),
    terminate it, kill it, each bounded in time. The soak's children also exit at the
    end of their stdin when the driver dies without this cleanup (even killed)."""
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    try:
        yield Child(proc, log)
    finally:
        with trio.CancelScope(shield=True):
            await stop(proc)


async def stop(proc: trio.Process) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()
    for ending in (None, proc.terminate, proc.kill):
        if ending is not None and proc.returncode is None:
            ending()
        with trio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
        if proc.returncode is not None:
            return


MIB = 1 << 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks


def rss_verdict(rss: list[int], warmup: int, tolerance: int) -> tuple[bool, str]:
    """RSS must not grow from round to round. `rss` holds KiB at the soak's start and
    at the end of each round. The rounds after the `warmup` first ones may not rise
    more than `tolerance` KiB above the highest RSS of the warm-up rounds.

    Why this: a leak grows with the work done, so it adds up round after round and
    crosses a fixed tolerance given rounds enough (comparing each round only with the
    one before would let a slow leak through, a little under the tolerance each time).
    What does not grow with the work stays inside the tolerance once warmed up: what
    happens to be in flight at the sampling instant (bounded: a stalled session holds
    at most its window in the server) and the allocator's high-water mark, which takes
    tens of seconds to settle with 1000 sessions (hence half the run as warm-up, and
    `judge_rss`)."""
    if len(rss) < warmup + 2 or warmup < 1:
        return True, f"not judged: {len(rss) - 1} rounds, {warmup} of them warm-up"
    base = max(rss[1 : warmup + 1])
    peak = max(rss[warmup + 1 :])
    ok = peak <= base + tolerance
    return ok, (
        f"max(rounds {warmup + 1}..{len(rss) - 1}) {peak / 1024:.1f}"
        f" {'<=' if ok else '>'} max(warm-up rounds 1..{warmup}) {base / 1024:.1f}"
        f" + {tolerance / 1024:.0f} MiB" + ("" if ok else ": GROWS")
    )


def judge_rss(a: argparse.Namespace) -> str | None:
    """Why RSS is only reported in this run (None: it is judged). A short warm-up
    would judge the allocator settling, not the server."""
    warmup = a.duration * a.warmup_rounds / a.rounds
    if warmup < a.rss_min_warmup:
        return f"warm-up {warmup:g} s < {a.rss_min_warmup:g} s, so reported, not judged"
    return None


@dataclass
class Outcome:
    args: argparse.Namespace
    servers: int = 0
    stats: Stats | None = None
    rss: list[int] = field(default_factory=list)  # KiB: soak start, end of each round
    blocks: list[int] = field(default_factory=list)  # Python heap blocks, the same times
    held: list[int] = field(default_factory=list)  # payload bytes in flight, the same times
    rss_idle: int = 0  # KiB once all left
    rss_trimmed: int = 0  # KiB after malloc_trim(0)
    blocks_idle: int = 0
    sent_in_soak: int = 0
    cpu: float = 0.0
    idle: dict[str, Any] = field(default_factory=dict)
    peer: dict[str, Any] = field(default_factory=dict)
    log_levels: dict[str, int] = field(default_factory=dict)
    log_errors: list[str] = field(default_factory=list)
    server_exit: int | None = None
    server_died: bool = False
    times: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_log(log: Path, out: Outcome) -> None:
    """Count the server's warnings and errors; keep the first errors and, when the
    server died, the last line it wrote (its exception)."""
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        level = line.split(" ", 1)[0]
        if level in ("WARNING", "ERROR", "CRITICAL"):
            out.log_levels[level] = out.log_levels.get(level, 0) + 1
            if level != "WARNING" and len(out.log_errors) < 5:
                out.log_errors.append(line[:300])
        elif "Traceback" in line:
            out.log_levels["TRACEBACK"] = out.log_levels.get("TRACEBACK", 0) + 1
    if out.server_died:
        last = [line for line in lines if EXCEPTION_LINE.search(line)][-1:]
        out.log_errors += [f"the server died of: {line.strip(' |')[:300]}" for line in last]


async def soak(a: argparse.Namespace, logs: Path, out: Outcome) -> None:
    t_start = time.monotonic()
    raise_nofile_limit()
    out.servers = -(-a.sessions // a.per_server)
    py = sys.executable
    peer_cmd = [py, "-m", "benchmarks.soak_peer", "--slots", str(a.sessions)]
    peer_cmd += ["--rcvbuf", str(a.rcvbuf)]
    try:
        async with child(peer_cmd, logs / "peer.log") as peer:
            peer_ports = json.loads(await peer.expect("PORTS ", START_TIMEOUT))
            server_cmd = [py, "-m", "benchmarks.soak_server", "--per-server", str(a.per_server)]
            server_cmd += ["--reconnect", str(a.reconnect)]
            server_cmd += ["--peer-ports", ",".join(map(str, peer_ports))]
            async with child(server_cmd, logs / "server.log") as server:
                out.times["start"] = time.monotonic() - t_start
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch, server, out, nursery.cancel_scope)
                        await serve_soak(a, server, peer, out)
                        nursery.cancel_scope.cancel()
                except Exception:
                    if server.proc.poll() is None:
                        raise
                    died(server, out)  # what failed next is only a consequence
            out.server_exit = server.proc.returncode
    finally:
        read_log(logs / "server.log", out)
        out.times["total"] = time.monotonic() - t_start


async def watch(server: Child, out: Outcome, soak_scope: trio.CancelScope) -> None:
    """A server that exits during the soak ends it at once."""
    await server.proc.wait()
    died(server, out)
    soak_scope.cancel()


def died(server: Child, out: Outcome) -> None:
    if not out.server_died:
        out.server_died = True
        out.problems.append(f"the server process died (exit {server.proc.returncode})")


async def serve_soak(a: argparse.Namespace, server: Child, peer: Child, out: Outcome) -> None:
    """Link the sessions, run the rounds, drain, collect the reports."""
    n = a.sessions
    spice_ports = json.loads(await server.expect("LISTENING ", START_TIMEOUT))
    pid = server.proc.pid
    settings = Settings(
        sessions=n,
        per_server=a.per_server,
        spice_ports=spice_ports,
        rate=a.rate * 1e6,
        window=a.window,
        lz4_fraction=a.lz4_fraction,
        link_timeout=a.link_timeout,
        seed=a.seed,
        drop_modes=a.drop_modes.split(","),
    )
    load = Load(settings, peer)
    out.stats = load.stats
    t_link = time.monotonic()
    async with trio.open_nursery() as nursery:
        for slot in range(n):
            nursery.start_soon(load.run_slot, slot)
        with trio.move_on_after(a.link_timeout):
            await load.all_linked.wait()
        out.times["link"] = time.monotonic() - t_link
        if not load.all_linked.is_set():
            out.problems.append(
                f"only {load.initial_linked} of {n} sessions linked in {a.link_timeout} s"
            )
        else:
            await run_rounds(a, load, server, out)
        t_drain = time.monotonic()
        load.finish(a.drain_timeout)
    out.times["drain"] = time.monotonic() - t_drain
    out.idle = await server.ask(f"wait-idle {IDLE_TIMEOUT}", IDLE_TIMEOUT + ASK_TIMEOUT)
    out.rss_idle = rss_kib(pid)
    trimmed = await server.ask("trim")
    out.rss_trimmed = rss_kib(pid)
    out.blocks_idle = trimmed["python_blocks"]
    out.peer = await peer.ask("report")


async def run_rounds(a: argparse.Namespace, load: Load, server: Child, out: Outcome) -> None:
    """The soak proper: traffic and faults for `--duration` s; the server's RSS (and
    Python heap) at the start and at the end of each of `--rounds` equal rounds."""

    async def sample() -> None:
        out.rss.append(rss_kib(server.proc.pid))
        mem = await server.ask("memory")
        out.blocks.append(mem["python_blocks"])
        out.held.append(mem["held_bytes"])

    t0 = trio.current_time()
    end = t0 + a.duration
    await sample()
    cpu0 = cpu_seconds(server.proc.pid)
    sent0 = load.stats.bytes_sent
    load.started.set()
    kinds = [k for k in a.faults.split(",") if k]
    fault_rate = a.fault_rate * a.sessions  # per minute, all sessions together
    async with trio.open_nursery() as nursery:
        stall = (a.stall_min, a.stall_max)
        nursery.start_soon(load.inject, end, fault_rate, kinds, stall, a.on_stalled)
        for i in range(1, a.rounds + 1):
            await trio.sleep_until(t0 + a.duration * i / a.rounds)  # pacing: round ends
            await sample()
    out.sent_in_soak = load.stats.bytes_sent - sent0
    out.cpu = cpu_seconds(server.proc.pid) - cpu0
    out.times["soak"] = trio.current_time() - t0


def verdict(out: Outcome) -> list[str]:
    """Every reason the soak failed (none: it passed)."""
    a, stats = out.args, out.stats
    problems = list(out.problems)
    if stats is not None and stats.problems:
        problems.append(f"{stats.problems} session problems ({stats.mismatches} mismatches)")
    if out.rss and judge_rss(a) is None:
        ok, _ = rss_verdict(out.rss, a.warmup_rounds, int(a.rss_tolerance * 1024))
        if not ok:
            problems.append("server RSS grew over the rounds")
    if not out.idle:
        problems.append("no idle report from the server")
    elif out.idle["not_idle"]:
        problems.append(f"{out.idle['not_idle']} server counters not idle after all left")
    if out.log_levels.get("ERROR") or out.log_levels.get("CRITICAL") or out.log_errors:
        problems.append("the server logged errors")
    if out.server_exit not in (None, 0) and not out.server_died:
        problems.append(f"the server did not exit cleanly at the end ({out.server_exit})")
    return problems


def mb(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


def summary(out: Outcome, problems: list[str], logs: Path | None) -> str:
    """The one-screen summary."""
    a, s, t = out.args, out.stats, out.times
    lines = [
        f"trivmc soak: {a.sessions} port sessions for {a.duration:g} s in {a.rounds} rounds,"
        f" seed {a.seed}",
        f"server      one process: {out.servers} trivmc.server.Server x <= {a.per_server} port"
        " channels (a channel id is one byte) in one trio.run; each port's backend"
        f" tcp:127.0.0.1:PORT,reconnect={a.reconnect:g} to the soak's echo peer (own process)",
    ]
    if s is not None:
        f = s.faults
        soak_secs = t.get("soak")
        rate = f"{out.sent_in_soak / soak_secs / 1e6:.1f}" if soak_secs else "-"
        lines += [
            f"sessions    {s.sessions_linked} linked: {s.sessions_linked - s.replacements} at"
            f" the start + {s.replacements} replacing faulted ones; {s.busy_retries} links retried"
            " (channel still busy)",
            f"faults      {sum(f.values())}: reset {f['reset']} ({s.partials_sent} partial"
            f" messages sent), leave {f['leave']}, drop {f['drop']} (fin"
            f" {s.drops_by_mode['fin']}, rst {s.drops_by_mode['rst']}; {s.drops_seen} seen as"
            f" port closed + reopened), stall {f['stall']} ({a.stall_min:g}-{a.stall_max:g} s,"
            f" {a.window // 1024} KiB pushed into each); {s.faults_on_stalled} resets, leaves"
            f" and drops hit a stalled session; {s.faults_skipped} skipped",
            f"bytes       sent {mb(s.bytes_sent)} ({rate} MB/s in the soak, target"
            f" {a.rate:g}), verified {mb(s.bytes_verified)}, after faults (unchecked)"
            f" {mb(s.bytes_unchecked)}",
            f"verified    {s.sessions_verified} sessions not faulted got every byte back once"
            f" and in order; mismatches {s.mismatches}, problems {s.problems}",
        ]
    if out.rss:
        tolerance = int(a.rss_tolerance * 1024)
        _, text = rss_verdict(out.rss, a.warmup_rounds, tolerance)
        lines += [
            f"RSS MiB     start {out.rss[0] / 1024:.0f} | rounds "
            + (" ".join(f"{r / 1024:.0f}" for r in out.rss[1:]) or "-")
            + (
                f" | all left {out.rss_idle / 1024:.0f}, after malloc_trim"
                f" {out.rss_trimmed / 1024:.0f}"
                if out.rss_idle
                else ""
            ),
            f"RSS check   {text}" + (f" ({why})" if (why := judge_rss(a)) else ""),
            "py heap k   start "
            + f"{out.blocks[0] / 1000:.0f} | rounds "
            + (" ".join(f"{b / 1000:.0f}" for b in out.blocks[1:]) or "-")
            + (f" | all left {out.blocks_idle / 1000:.0f}" if out.blocks_idle else "")
            + " (Python allocator blocks, 1000s)",
            "held MiB    start "
            + f"{out.held[0] / MIB:.0f} | rounds "
            + (" ".join(f"{h / MIB:.0f}" for h in out.held[1:]) or "-")
            + " (payload in flight in the server: device queues, backend and client"
            " buffers)",
        ]
    if out.idle:
        act = out.idle["activity"]
        lines += [
            f"idle        {out.idle['not_idle']} of {out.idle['counters']} counters of"
            f" {out.idle['channels']} channels not idle after all left (waited"
            f" {out.idle.get('waited', 0):.2f} s)",
            f"server did  {act['connections']} connections, {act['clients_served']} port"
            f" clients ({act['clients_refused']} refused busy), {act['peers_served']} backend"
            f" connections ({act['connect_failures']} failed); backpressure:"
            f" {out.idle['devices_out_of_tokens']} devices ran out of tokens, write queue up"
            f" to {out.idle['peak_queue']} buffers, {act['write_retries']} write retries;"
            f" CPU {out.cpu:.1f} s in the soak",
        ]
    if out.peer:
        p = out.peer
        lines.append(
            f"peer        {p['connections']} connections, echoed {mb(p['bytes_echoed'])},"
            f" {p['stalls']} stalls, drops: {p['drops_fin']} fin, {p['drops_rst']} rst,"
            f" {p['drops_missed']} missed"
        )
    levels = ", ".join(f"{k.lower()} {v}" for k, v in sorted(out.log_levels.items())) or "none"
    lines.append(f"server log  warnings and errors: {levels}")
    names = ("start", "link", "soak", "drain", "total")
    lines.append("time        " + ", ".join(f"{k} {t[k]:.1f} s" for k in names if k in t))
    if s is not None:
        shown = 3 if out.server_died else SHOWN_PROBLEMS
        lines += [f"  ! {p}" for p in s.listed[:shown]]
        if s.problems > shown:
            lines.append(f"  ! ... {s.problems - shown} more ({s.mismatches} mismatches in all)")
    if out.idle:
        lines += [f"  ! {p}" for p in out.idle["problems"][:10]]
    lines += [f"  ! {e}" for e in out.log_errors]
    if problems:
        lines.append("FAIL: " + "; ".join(problems))
        if logs is not None:
            lines.append(f"logs kept in {logs}")
    else:
        lines.append("PASS")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Soak trivmc under faults (see benchmarks/soak.py and docs/benchmarks.md)."
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults (60)")
    p.add_argument("--sessions", type=int, default=1000, help="live sessions (1000)")
    p.add_argument("--per-server", type=int, default=250, help="port channels per server")
    p.add_argument("--rounds", type=int, default=6, help="RSS rounds over the duration (6)")
    p.add_argument("--warmup-rounds", type=int, default=None, help="(half the rounds)")
    p.add_argument("--rss-tolerance", type=float, default=8.0, help="MiB (8)")
    p.add_argument(
        "--rss-min-warmup",
        type=float,
        default=30.0,
        help="seconds of warm-up below which RSS is reported, not judged (30)",
    )
    p.add_argument("--rate", type=float, default=8.0, help="MB/s each way, all sessions (8)")
    p.add_argument(
        "--window",
        type=int,
        default=6 << 20,
        help="bytes in flight per session, and what a stalled session pushes (6 MiB)",
    )
    p.add_argument(
        "--fault-rate", type=float, default=0.25, help="faults per session per minute (0.25)"
    )
    p.add_argument("--faults", default=",".join(FAULTS), help="kinds: reset,leave,stall,drop")
    p.add_argument("--drop-modes", default=",".join(DROP_MODES), help="fin,rst")
    p.add_argument(
        "--on-stalled",
        type=float,
        default=0.25,
        help="chance that a reset, leave or drop picks a stalled session (0.25)",
    )
    p.add_argument("--stall-min", type=float, default=0.5)
    p.add_argument("--stall-max", type=float, default=3.0)
    p.add_argument("--lz4-fraction", type=float, default=0.25, help="sessions offering LZ4")
    p.add_argument("--reconnect", type=float, default=1.0, help="backend reconnect=S")
    p.add_argument("--rcvbuf", type=int, default=32 * 1024, help="the peer's SO_RCVBUF")
    p.add_argument("--link-timeout", type=float, default=180.0)
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-dir", type=Path, default=None, help="keep the logs here")
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 32)
    if a.warmup_rounds is None:
        a.warmup_rounds = a.rounds // 2
    bad = set(a.faults.split(",")) - set(FAULTS) - {""}
    if bad:
        p.error(f"unknown fault kinds: {', '.join(sorted(bad))}")
    if not a.drop_modes or set(a.drop_modes.split(",")) - set(DROP_MODES):
        p.error(f"--drop-modes takes {','.join(DROP_MODES)} or one of them")
    if a.sessions < 1 or a.rounds < 1 or a.duration <= 0 or not 1 <= a.per_server <= 256:
        p.error("need sessions >= 1, rounds >= 1, duration > 0, 1 <= per-server <= 256")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    logging.basicConfig(level=logging.ERROR)  # the client library's notes are noise here
    logs = a.log_dir or Path(tempfile.mkdtemp(prefix="trivmc-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    out = Outcome(a)
    budget = a.link_timeout + a.duration + a.drain_timeout + 4 * START_TIMEOUT
    broke = False
    try:
        trio.run(guarded, a, logs, out, budget)
    except Exception as e:  # the harness itself failed: say so, with the traceback
        broke = True
        traceback.print_exc()
        out.problems.append(f"the soak itself broke: {e!r}")
    problems = verdict(out)
    keep = bool(problems) or a.log_dir is not None
    text = summary(out, problems, logs if keep else None)
    print(text, flush=True)
    if keep:
        (logs / "summary.txt").write_text(text + "\n")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return EXIT_BROKE if broke else EXIT_FAIL if problems else 0


async def guarded(a: argparse.Namespace, logs: Path, out: Outcome, budget: float) -> None:
    with trio.fail_after(budget):
        await soak(a, logs, out)


if __name__ == "__main__":
    sys.exit(main())
