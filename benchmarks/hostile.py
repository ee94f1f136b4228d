"""Rows for hostile clients: what one costs a server's memory, and link time while 1000
connections sit half-open. trivmc (`trivmc serve`, an echo port, no ticket) beside the
spice-server anchor (the same), each in its own process; the attacks are
`attack_client.py`, the same for both.

Memory: the server's peak RSS during the attack (VmHWM, reset just before it through
/proc/PID/clear_refs) minus its RSS idle. The target (docs/limits.md): within 64 MiB of
idle for trivmc. spice-server has no bound; its attack is cut at 1 GiB sent.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .procs import HERE, free_port, pin_client, py, rss_kib, run_json, server, stop_client
from .report import Result
from .rows import Sizes, anchor_cmd, trivmc_cmd

MIB = 1 << 20
MAX_SENT = 1 << 30
CUT = 2 << 30  # server RSS growth at which an attack is stopped
ATTACK_TIME = 60.0
HALF_OPEN = 1000

_16M = str(16 * MIB)
ATTACKS = [
    ("data_8m", "8 MiB DATA messages, never reading", ["data", "--msg-size", str(8 * MIB)]),
    ("data_16m", "16 MiB DATA (the largest taken), never reading", ["data", "--msg-size", _16M]),
    (
        "lz4_16m",
        "COMPRESSED_DATA inflating to 16 MiB, never reading",
        ["data", "--lz4", "--msg-size", _16M],
    ),
    ("attach", "main: ATTACH_CHANNELS in a loop, never reading", ["attach"]),
    ("halfopen", f"{HALF_OPEN} connections half-open", ["halfopen", "--count", str(HALF_OPEN)]),
]


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def reset_hwm(pid: int) -> None:
    """Start the peak RSS over from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def attacking(port: int, args: list[str], server_pid: int) -> Iterator[dict[str, object]]:
    """Run one attack against 127.0.0.1:port; yield its report once it is in place (the
    server stopped taking data, or the half-open connections are open). An attack that
    takes the server past +CUT of RSS is stopped there (spice-server has no bound);
    one that takes longer than ATTACK_TIME is stopped too."""
    cmd = py(HERE / "attack_client.py", *args, "--port", str(port))
    cmd += ["--max-bytes", str(MAX_SENT)] if args[0] != "halfopen" else []
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pin_client
    )
    try:
        yield _report(proc, server_pid, rss_kib(server_pid))
    finally:
        stop_client(proc)


def _report(proc: subprocess.Popen[str], server_pid: int, idle_kib: int) -> dict[str, object]:
    assert proc.stdout is not None
    deadline = time.monotonic() + ATTACK_TIME
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(0.05):
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"attack failed (status {proc.wait(30)})")
                return {} if line.startswith("READY") else dict(json.loads(line))
            try:
                grown = rss_kib(server_pid) - idle_kib
            except RuntimeError:  # no VmRSS: the server is gone
                proc.kill()
                return {"ended": "the server died"}
            if grown > CUT // 1024:
                proc.kill()
                return {"ended": f"cut at +{CUT // MIB} MiB of server RSS"}
    proc.kill()
    return {"ended": f"cut after {ATTACK_TIME:.0f} s"}


def _server_cmd(who: str, port: int, anchor: Path | None) -> list[str]:
    if who == "trivmc":
        return trivmc_cmd(port, "echo", 0)
    assert anchor is not None
    return anchor_cmd(str(anchor), port, "echo", 0)


def hostile_rows(sizes: Sizes, runs: int, anchor: Path | None, tmp: Path) -> list[Result]:
    """One row per attack (RSS growth, one run each: the bound is what matters, not
    a median) and the link-time rows, quiet and under half-open load."""
    results = []
    link_row = Result(
        "link_halfopen",
        f"link time with {HALF_OPEN} connections half-open",
        "ms",
        False,
        limit=100,
        metric="median_ms",
    )
    link_idle = Result("link_quiet", "link time, same servers, nothing else", "ms", False)
    link_idle.metric = "median_ms"
    for key, label, args in ATTACKS:
        row = Result(f"rss_{key}", f"RSS growth: {label}", "MiB", False, limit=64)
        row.metric = "growth"
        ended: dict[str, str] = {}
        for who in ["trivmc"] + (["spice-server"] if anchor is not None else []):
            port = free_port()
            with server(_server_cmd(who, port, anchor), port) as srv:
                if key == "halfopen":
                    link_idle.add(who, _links(port, sizes))
                idle = rss_kib(srv.pid)
                reset_hwm(srv.pid)
                with attacking(port, args, srv.pid) as report:
                    if key == "halfopen":
                        link_row.add(who, _links(port, sizes))
                    ended[who] = str(report.get("ended", ""))
                    if srv.poll() is not None:
                        row.text[who] = "the server died"
                        continue
                    peak = hwm_kib(srv.pid)
                row.add(who, {"growth": max(0, peak - idle) / 1024})
        row.note = "; ".join(f"{who}: {how}" for who, how in ended.items() if how)
        results.append(row)
    link_row.note = (
        "trivmc's lean link client (link_client.py), a third of the connections idle, a"
        " third with the magic only, a third with a link message and no ticket, from"
        f" {HALF_OPEN // 25} addresses"
    )
    return [*results, link_idle, link_row]


def _links(port: int, sizes: Sizes) -> dict[str, object]:
    return run_json(py(HERE / "link_client.py", "--port", str(port), "--count", str(sizes.links)))
