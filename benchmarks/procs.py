"""Processes of a benchmark run: servers started and stopped, load clients run, RSS and
CPU time read.

Every server is a child process on 127.0.0.1 that this module stops (terminate, then
kill) however the run ends; every client run has a time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("TRIVMC_SHARED", ROOT.parent / "shared"))
ANCHOR_DIR = SHARED / "anchor"
RAW_CLIENT = ANCHOR_DIR / "raw_client.py"
GTK_CLIENT = ROOT / "tests" / "interop" / "gtk_client.py"
PORT_NAME = "org.trivmc.bench.0"
CLIENT_TIMEOUT = 300


_handed_out: set[int] = set()


def free_port(count: int = 1) -> int:
    """A port P with P..P+count-1 free on 127.0.0.1 and not handed out before (below
    32768, as the anchor asks)."""
    for base in range(20000 + os.getpid() % 4000 * 2, 32768 - count, count):
        wanted = set(range(base, base + count))
        if wanted & _handed_out:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in wanted:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.update(wanted)
        return base
    raise RuntimeError("no free ports")


def anchor_binary() -> Path | None:
    """The C spice-server reference, built once with its build.sh; None if it cannot be."""
    out = ROOT / ".nox" / "anchor-server"
    if out.exists():
        return out
    if not (ANCHOR_DIR / "build.sh").exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", str(ANCHOR_DIR / "build.sh"), str(out)], capture_output=True)
    if r.returncode != 0 or not out.exists():
        print(f"anchor build failed: {r.stderr.decode()[-500:]}", file=sys.stderr)
        return None
    return out


SERVER_CPUS = {1} if (os.cpu_count() or 1) >= 2 else None
CLIENT_CPUS = {0} if SERVER_CPUS else None


def pin_server() -> None:
    """In a server's child before exec: its own core (the load client gets another),
    so every server is measured in the same placement, not wherever the scheduler
    put it this time."""
    if SERVER_CPUS:
        os.sched_setaffinity(0, SERVER_CPUS)


def pin_client() -> None:
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until something accepts on 127.0.0.1:port (the server process is starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def rss_kib(pid: int) -> int:
    """Resident set size of one process (its children not included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (of every thread of it; Linux
    /proc/PID/task/*/children). trivmc's key-maker workers are its server's children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found += [int(c) for c in task.read_text().split()]
    return sorted(found)


CPUCLOCK_SCHED = 2  # Linux's per-process CPU clock: time on a CPU, in nanoseconds


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a whole process, user + system (all its threads, not its children).

    /proc/PID/stat gives user and system time in clock ticks (10 ms here), coarser than
    a quick run of a throughput row (32 MiB: tens of ms of server CPU); the kernel makes
    their sum the process's time on a CPU, which its CPU clock (the clock id
    clock_getcpuclockid gives, CPUCLOCK_SCHED) reads in nanoseconds. `proc_stat_cpu_seconds`
    is the tick reading (the fallback); both agree to the tick."""
    try:
        return time.clock_gettime((~pid << 3) | CPUCLOCK_SCHED)
    except OSError:  # no such clock (not Linux?): the ticks, or the process is gone
        stat = Path(f"/proc/{pid}/stat").read_text()
        return proc_stat_cpu_seconds(stat, os.sysconf("SC_CLK_TCK"))


def proc_stat_cpu_seconds(stat: str, ticks_per_s: int) -> float:
    """utime + stime of one /proc/PID/stat line in seconds (the coarse reading; fields 14
    and 15, counted after the command name, which may hold spaces and parentheses)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of a server process and of each of its children, at one instant."""

    server: float
    children: dict[int, float]


def cpu_snapshot(pid: int, with_children: bool = False) -> CpuSnapshot:
    kids: dict[int, float] = {}
    for child in children(pid) if with_children else []:
        with contextlib.suppress(OSError):  # ended meanwhile
            kids[child] = cpu_seconds(child)
    return CpuSnapshot(cpu_seconds(pid), kids)


def cpu_used(before: CpuSnapshot, after: CpuSnapshot) -> tuple[float, float]:
    """CPU seconds between two snapshots: (the server process, its children together).
    A child started in between counts from zero; one that ended in between is not
    counted (a key-maker worker that died mid-run: rare)."""
    kids = sum(cpu - before.children.get(pid, 0.0) for pid, cpu in after.children.items())
    return after.server - before.server, kids


def wait_idle(pid: int, quiet: float = 0.3, timeout: float = 20.0) -> None:
    """Block until a process and its children have used under 1 ms of CPU in `quiet`
    seconds: done starting. A server accepts connections before it is (trivmc listens,
    then its key-maker workers import cryptography and fill the key pool)."""
    deadline = time.monotonic() + timeout
    last = cpu_snapshot(pid, with_children=True)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_snapshot(pid, with_children=True)
        own, kids = cpu_used(last, now)
        if own + kids < 0.001 and now.children.keys() == last.children.keys():
            return
        last = now
    raise TimeoutError(f"server {pid} still busy after {timeout:g} s")


@contextlib.contextmanager
def server(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; yield it once `port` accepts."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=pin_server,
    )
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_client(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """End a load client that runs until its stdin closes: close it, wait, kill."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_json(cmd: list[str], timeout: float = CLIENT_TIMEOUT) -> dict[str, object]:
    """Run a load client; its last stdout line is a JSON object (an `error` key fails)."""
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, preexec_fn=pin_client)
    lines = r.stdout.decode().strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{cmd[1:3]} failed ({r.returncode}): {r.stderr.decode()[-800:]}")
    result: dict[str, object] = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"{cmd[1:3]}: {result['error']}")
    return result


def py(script: Path | str, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]
