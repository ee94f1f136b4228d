"""The soak harness works end to end in tiny configurations (the real soak is
`nox -s soak`): 20 sessions on 4 servers of 5 ports, a few seconds each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.procs import ROOT
from benchmarks.soak import EXIT_BROKE, rss_verdict
from benchmarks.soak_client import pattern

TINY = ["--sessions", "20", "--per-server", "5", "--duration", "3", "--rounds", "3"]
TINY += ["--rate", "2", "--stall-min", "0.3", "--stall-max", "1", "--fault-rate", "20"]


def soak(logs: Path, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "benchmarks.soak", *TINY, "--log-dir", str(logs), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr[-3000:]


def line(out: str, head: str) -> str:
    return next(text for text in out.splitlines() if text.startswith(head))


def test_stalled_backends_lose_no_byte(tmp_path: Path) -> None:
    """Backends stall while their sessions push a window into them: every byte comes
    back, every counter goes back to idle (RSS is only reported in so short a run)."""
    code, out = soak(tmp_path, "--faults", "stall", "--seed", "3")
    assert code == 0, out
    assert out.rstrip().endswith("PASS"), out
    assert "one process: 4 trivmc.server.Server" in out
    assert "stall 0 " not in line(out, "faults"), out
    assert "20 sessions not faulted got every byte back" in out
    assert " 0 of " in line(out, "idle"), out
    assert "backpressure: 0 devices" not in out, out  # stalls reached the token limit


def test_every_kind_of_fault_is_injected_and_judged(tmp_path: Path) -> None:
    """All four kinds turn up (they come in shuffled rounds) and the soak reaches a
    verdict. Whether the server passes is the soak's business, not this test's: exit 1
    is a server finding; 2 would be the harness breaking. (Drops close with FIN only:
    an RST from a backend still kills the server, see docs/benchmarks.md.)"""
    code, out = soak(tmp_path, "--drop-modes", "fin", "--seed", "7")
    assert code != EXIT_BROKE, out
    faults = line(out, "faults")
    for kind in ("reset", "leave", "drop", "stall"):
        assert f"{kind} 0 " not in faults, faults
    assert line(out, "verified") and line(out, "RSS check") and line(out, "idle")
    assert out.rstrip().endswith("PASS") or "FAIL: " in out


def test_pattern_says_whose_and_which_byte() -> None:
    whole = pattern(5, 0, 64)
    assert pattern(5, 3, 20) == whole[3:23]
    assert int.from_bytes(whole[8:16], "little") == (5 << 32) | 1
    assert pattern(6, 0, 64) != whole


def test_rss_verdict_catches_slow_growth_not_noise() -> None:
    mib = 1024
    noisy = [300 * mib, 400 * mib, 406 * mib, 397 * mib, 405 * mib, 402 * mib]
    assert rss_verdict(noisy, 1, 8 * mib)[0]
    # 3 MiB a round: under the tolerance from one round to the next, not in total
    creeping = [300 * mib, 400 * mib, 403 * mib, 406 * mib, 409 * mib, 412 * mib]
    assert not rss_verdict(creeping, 1, 8 * mib)[0]
    assert rss_verdict([300 * mib, 400 * mib], 1, 8 * mib)[0]
