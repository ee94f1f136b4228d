"""Side-by-side benchmarks: trivmc, the C spice-server reference and a raw socket pump.

Run with `nox -s bench` (about 7 minutes) or `nox -s bench -- --quick` (about 4).
Each row runs the same load client, alternately, against trivmc (`trivmc serve`, in its
own process), the spice-server anchor (`../shared/anchor`, built with its build.sh when
it can be) and the raw loopback pump (`pump.py`); each figure is the median of `--runs`
(at least 5), after one warm-up run per server that is not counted. The table is
printed and written, with the machine, to `benchmarks/results/latest.md`. Ratios are
trivmc / spice-server from this one run: the machine is shared and noisy, so compare
nothing across runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from . import extra
from .procs import HERE, anchor_binary, free_port, run_json
from .report import Result, render
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


def run_row(row: Row, sizes: Sizes, runs: int, anchor: Path | None) -> Result:
    """Start the three servers once, then alternate the clients: one warm-up run each,
    then `runs` counted runs."""
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
    with extra.servers({name: (cmd, ports[name]) for name, cmd in servers.items()}):
        names = list(servers)
        for run in range(WARMUP + runs):  # alternating; the warm-up run is not counted
            k = run % len(names)
            for name in names[k:] + names[:k]:  # each server goes first in turn
                if name == "pump":
                    cmd = pump_client(row.fill(row.pump, sizes), ports[name])
                else:
                    cmd = spice_client(row.fill(row.spice, sizes), ports[name], row.lean)
                res = run_json(cmd)
                extra.check(row, res, nbytes)
                if run >= WARMUP:
                    result.add(name, res)
    result.note = sustained_note(result)
    return result


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
    if c is not None and c:
        text += (
            f"; spice-server {c:.2f} ms, {rates['spice-server']:.0f} sessions/s; ratio {t / c:.2f}"
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
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- cores: {os.cpu_count()}, {platform.machine()}, {platform.platform()}",
        f"- Python {platform.python_version()}, trio {trio.__version__}",
        f"- spice-server (anchor): libspice-server1 {spice or 'not installed'}",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs: about 4 minutes")
    p.add_argument("--runs", type=int, help="runs per figure (median; >= 5; default 7, 5 quick)")
    p.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    p.add_argument("rows", nargs="*", help="only these rows (keys), e.g. send_64k link")
    a = p.parse_args()
    if a.runs is None:
        a.runs = 5 if a.quick else 7
    if a.runs < 5:
        p.error("--runs must be at least 5 (each figure is a median of at least 5)")
    sizes = QUICK if a.quick else Sizes()
    anchor = anchor_binary()
    if anchor is None:
        print("spice-server anchor not available: its column stays empty", file=sys.stderr)
    results: list[Result] = []
    wanted = set(a.rows)
    for row in ROWS:
        if not wanted or row.key in wanted:
            print(f"bench: {row.label}", file=sys.stderr, flush=True)
            results.append(run_row(row, sizes, a.runs, anchor))
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in extra.SPECIAL:
            if not wanted or name in wanted:
                print(f"bench: {name}", file=sys.stderr, flush=True)
                results.extend(make(sizes, a.runs, anchor, Path(tmp)))
    command = "nox -s bench" + (" -- --quick" if a.quick else "")
    text = render(results, machine(), command)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
