"""Side-by-side benchmarks: trivmc, the C spice-server reference and a raw socket pump.

Run with `nox -s bench` (about 7 minutes) or `nox -s bench -- --quick` (about 4).
Each row runs the same load client, alternately, against trivmc (`trivmc serve`, in its
own process), the spice-server anchor (`../shared/anchor`, built with its build.sh when
it can be) and the raw loopback pump (`pump.py`); each figure is the median of `--runs`
(at least 5), after one warm-up run per server that is not counted. Ratios are
trivmc / spice-server of each pair of runs (the two back to back): their median and
interquartile range. Throughput rows add each server's CPU seconds per GB. The table
is printed and written, with the machine, to `benchmarks/results/latest.md` (a run of
some rows: `partial.md`); `--repeat N` runs it N times and gives the median of the
medians with their range. The machine is shared and noisy, so compare nothing across
runs (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from . import extra
from .procs import (
    HERE,
    anchor_binary,
    cpu_snapshot,
    cpu_used,
    free_port,
    run_json,
    wait_idle,
)
from .report import CPU, KEYS_CPU, Result, combine, cpu_per_gb, render
from .rows import (
    QUICK,
    ROWS,
    Row,
    Sizes,
    anchor_cmd,
    pump_client,
    pump_cmd,
    spice_client,
    trivmc_cmd,
)

WARMUP = 1  # runs per server before the counted ones (caches, pools, page faults)
PAIR = ("trivmc", "spice-server")  # the servers whose runs pair up for the ratio


def run_order(run: int, names: list[str]) -> list[str]:
    """The servers' order in run `run`: trivmc and spice-server back to back (a pair,
    whose ratio is one sample), each first in every other run; the pump before the
    pair in every other two runs, after it otherwise."""
    pair = [n for n in names if n in PAIR]
    rest = [n for n in names if n not in PAIR]
    if run % 2:
        pair.reverse()
    return pair + rest if run // 2 % 2 == 0 else rest + pair


def run_row(row: Row, sizes: Sizes, runs: int, anchor: Path | None) -> Result:
    """Start the three servers once, then alternate the clients: one warm-up run each,
    then `runs` counted runs. Throughput rows also read each server's CPU time (and
    trivmc's key makers') around each run, and what a session's link costs it
    (`session_cpu`), which comes off: their figure is server CPU per GB moved."""
    result = Result(
        row.key, row.label, row.unit, row.higher, row.target, row.also, metric=row.metric
    )
    nbytes = row.nbytes(sizes)
    ports = {name: free_port() for name in ("trivmc", "spice-server", "pump")}
    servers = {"trivmc": trivmc_cmd(ports["trivmc"], row.device, nbytes, row.password)}
    if anchor is not None:
        servers["spice-server"] = anchor_cmd(
            str(anchor), ports["spice-server"], row.device, nbytes, row.password
        )
    servers["pump"] = pump_cmd(ports["pump"], row.device, nbytes)
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    session: dict[str, tuple[float, float]] = {name: (0.0, 0.0) for name in servers}
    with extra.servers({name: (cmd, ports[name]) for name, cmd in servers.items()}) as procs:
        for proc in procs.values():
            wait_idle(proc.pid)  # done starting (trivmc's key pool full) before any run
        for run in range(WARMUP + runs):  # the warm-up run is not counted
            for name in run_order(run, list(servers)):
                if name == "pump":
                    cmd = pump_client(row.fill(row.pump, sizes), ports[name])
                else:
                    cmd = spice_client(row.fill(row.spice, sizes), ports[name], row.lean)
                before = cpu_snapshot(procs[name].pid, with_children=name == "trivmc")
                res = run_json(cmd)
                after = cpu_snapshot(procs[name].pid, with_children=name == "trivmc")
                extra.check(row, res, nbytes)
                if run >= WARMUP:
                    result.add(name, res)
                    cpu[name].append(cpu_used(before, after))
        for name in PAIR if row.throughput else ():  # the pump has no link
            if name in servers:
                session[name] = session_cpu(procs[name].pid, ports[name], runs)
    if row.throughput:
        for name, used in cpu.items():
            for own, kids in used:
                result.add_value(name, CPU, cpu_per_gb(own, nbytes, session[name][0]))
                if name == "trivmc":
                    result.add_value(name, KEYS_CPU, cpu_per_gb(kids, nbytes, session[name][1]))
        result.note = "server CPU per session (its link, taken off the CPU per GB): " + ", ".join(
            f"{name} {session[name][0] * 1e3:.1f} ms" for name in servers if name in PAIR
        )
    else:
        result.note = sustained_note(result)
    return result


def session_cpu(pid: int, port: int, count: int) -> tuple[float, float]:
    """CPU seconds a session without data costs a SPICE server (connect, main and port
    link, close: what each throughput run does besides moving its bytes): `count` of
    them with raw_client.py's link mode, (the server process, its children) each."""
    before = cpu_snapshot(pid, with_children=True)
    run_json(spice_client(["link", "--count", str(count)], port))
    own, kids = cpu_used(before, cpu_snapshot(pid, with_children=True))
    return own / count, kids / count


def sustained_note(result: Result) -> str:
    """For rows whose client reports the last 50 sessions: their ratio and rates."""
    t, c = (
        result.median("trivmc", "last50_median_ms"),
        result.median("spice-server", "last50_median_ms"),
    )
    if t is None:
        return ""
    rates = {who: result.median(who, "last50_per_s") for who in ("trivmc", "spice-server")}
    text = f"last 50 sessions (sustained): trivmc {t:.2f} ms, {rates['trivmc']:.0f} sessions/s"
    ratios = result.ratios("last50_median_ms")
    if c is not None and ratios:
        text += (
            f"; spice-server {c:.2f} ms, {rates['spice-server']:.0f} sessions/s;"
            f" ratio {statistics.median(ratios):.2f}"
        )
    return text


def machine() -> list[str]:
    try:
        spice = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "libspice-server1"],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        spice = ""
    load = os.getloadavg()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- cores: {os.cpu_count()}, {platform.machine()}, {platform.platform()}",
        f"- Python {platform.python_version()}, trio {trio.__version__}",
        f"- spice-server (anchor): libspice-server1 {spice or 'not installed'}",
        "- load average (1, 5, 15 min) at the end: " + " ".join(f"{x:.2f}" for x in load),
    ]


def command_line(quick: bool, repeat: int, runs: int, rows: list[str]) -> str:
    """The nox command that makes this table, for its heading."""
    args = ["--quick"] if quick else []
    args += [f"--runs {runs}"] if runs != (5 if quick else 7) else []
    args += [f"--repeat {repeat}"] if repeat > 1 else []
    args += rows
    return "nox -s bench" + (" -- " + " ".join(args) if args else "")


def table(rows: list[str], sizes: Sizes, runs: int, anchor: Path | None) -> list[Result]:
    """One table: every row (or those named), in order."""
    results: list[Result] = []
    wanted = set(rows)
    for row in ROWS:
        if not wanted or row.key in wanted:
            print(f"bench: {row.label}", file=sys.stderr, flush=True)
            results.append(run_row(row, sizes, runs, anchor))
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in extra.SPECIAL:
            if not wanted or name in wanted:
                print(f"bench: {name}", file=sys.stderr, flush=True)
                results.extend(make(sizes, runs, anchor, Path(tmp)))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs: about 4 minutes")
    p.add_argument("--runs", type=int, help="runs per figure (median; >= 5; default 7, 5 quick)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole table this many times: median of the medians, min-max (1)",
    )
    p.add_argument(
        "--out",
        help="where the table goes (default: results/latest.md for a run of every row,"
        " results/partial.md, not kept in git, for some rows)",
    )
    p.add_argument("rows", nargs="*", help="only these rows (keys), e.g. send_64k link")
    a = p.parse_args()
    if a.runs is None:
        a.runs = 5 if a.quick else 7
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.runs < 5:
        p.error("--runs must be at least 5 (each figure is a median of at least 5)")
    sizes = QUICK if a.quick else Sizes()
    anchor = anchor_binary()
    if anchor is None:
        print("spice-server anchor not available: its column stays empty", file=sys.stderr)
    command = command_line(a.quick, a.repeat, a.runs, a.rows)
    tables = []
    for i in range(a.repeat):
        if a.repeat > 1:
            print(f"bench: table {i + 1} of {a.repeat}", file=sys.stderr, flush=True)
        tables.append(table(a.rows, sizes, a.runs, anchor))
        if a.repeat > 1:  # each table as it ends, the combined one at the end
            one = render(tables[-1], [], f"{command}, table {i + 1} of {a.repeat}")
            print(one, file=sys.stderr, flush=True)
    results = combine(tables) if a.repeat > 1 else tables[0]
    text = render(results, machine(), command)
    print(text)
    out = Path(a.out or HERE / "results" / ("partial.md" if a.rows else "latest.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
