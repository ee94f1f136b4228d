"""One harness in one process, under one engine. Started by the runner
(`python -m tests.fuzz`); it can also be run by hand:

    python -m tests.fuzz.worker atheris NAME [libFuzzer flags] [CORPUS_DIR... | FILE...]
    python -m tests.fuzz.worker hypothesis NAME --crash-dir DIR [--time S] [--runs N]
    python -m tests.fuzz.worker replay NAME FILE...

atheris: trivmc, the harness and the parsers `harnesses.HARNESSES` lists are imported
under atheris's instrumentation, then libFuzzer drives the harness (its own flags and
output).
hypothesis: the seed corpus first, then inputs hypothesis draws (raw bytes, and seeds
with byte edits and splices), batch after batch until the time or the run count is
reached; a failing input is shrunk, written to the crash directory, and reported in
libFuzzer's words ("Test unit written to PATH", `stat::` lines) so the runner reads
both engines alike. replay: run the harness on the given inputs and show the failure.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from .harnesses import instrumented_packages, load, seed_inputs

HYPOTHESIS_BATCH_SECONDS = 2.0


def _quiet() -> None:
    """The code under test logs every bad peer; at fuzzing rates that is only noise."""
    logging.disable(logging.CRITICAL)


def _use_guest_driver() -> None:
    """Harnesses that run trio scenarios get one long guest run (see triodriver)."""
    if "tests.fuzz.triodriver" in sys.modules:
        from .triodriver import GuestDriver, use_driver

        use_driver(GuestDriver())


# ---- atheris -----------------------------------------------------------------------


def run_atheris(name: str, libfuzzer_args: Sequence[str]) -> None:
    import atheris

    if any(m == "trivmc" or m.startswith("trivmc.") for m in sys.modules):
        raise RuntimeError("trivmc was imported before instrumentation")
    import trio  # noqa: F401  (never instrumented: imported first)

    with atheris.instrument_imports(include=instrumented_packages(name)):
        harness = load(name)
    _quiet()
    _use_guest_driver()
    # libFuzzer starts its merge (and fork) children as the shell command argv[0]
    this = f"{sys.executable} -m tests.fuzz.worker atheris {name}"
    atheris.Setup([this, *libfuzzer_args], harness.fuzz_one)
    atheris.Fuzz()


# ---- hypothesis --------------------------------------------------------------------


def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]], other: bytes, max_len: int) -> bytes:
    buf = bytearray(seed)
    for kind, pos, data in edits:
        at = pos % (len(buf) + 1)
        if kind == 0:  # overwrite
            buf[at : at + len(data)] = data
        elif kind == 1:  # insert
            buf[at:at] = data
        elif kind == 2:  # delete
            del buf[at : at + len(data) + 1]
        elif kind == 3:  # splice another seed's tail
            buf[at:] = other[pos % (len(other) + 1) :]
        elif buf:  # flip one bit
            buf[at % len(buf)] ^= 1 << (pos & 7)
    return bytes(buf[:max_len])


def run_hypothesis(name: str, crash_dir: Path, seconds: float | None, runs: int | None) -> int:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    harness = load(name)
    _quiet()
    _use_guest_driver()
    seeds = seed_inputs(name)
    max_len = harness.MAX_LEN
    raw = st.binary(max_size=max_len)
    strategy = raw
    if seeds:
        edits = st.lists(
            st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.binary(max_size=8)),
            max_size=8,
        )
        mutated = st.builds(
            _mutate, st.sampled_from(seeds), edits, st.sampled_from(seeds), st.just(max_len)
        )
        strategy = st.one_of(raw, mutated, mutated)

    executed = 0
    last: list[bytes] = [b""]

    def one(data: bytes) -> None:
        nonlocal executed
        executed += 1
        last[0] = data
        harness.fuzz_one(data)

    start = time.monotonic()
    print(f"INFO: hypothesis engine, {len(seeds)} seed inputs, max_len {max_len}", flush=True)
    try:
        for seed in seeds:
            one(seed)
        print(f"#{executed}\tINITED corp: {len(seeds)}/{sum(map(len, seeds))}b", flush=True)
        batch = 100
        while True:
            elapsed = time.monotonic() - start
            if seconds is not None and elapsed >= seconds:
                break
            if runs is not None and executed >= runs:
                break
            n = batch if runs is None else max(1, min(batch, runs - executed))
            before, t0 = executed, time.monotonic()

            @settings(
                max_examples=n,
                deadline=None,
                database=None,
                derandomize=False,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy)
            def fuzz(data: bytes) -> None:
                one(data)

            fuzz()
            took = time.monotonic() - t0
            rate = (executed - before) / took if took > 0 else 1000.0
            batch = max(10, int(rate * HYPOTHESIS_BATCH_SECONDS))
            print(f"#{executed}\tpulse exec/s: {int(executed / (time.monotonic() - start))}")
    except Exception:
        _report_crash(crash_dir, last[0], traceback.format_exc())
        _final_stats(executed, start)
        return 1
    print(f"Done {executed} runs in {int(time.monotonic() - start)} second(s)")
    _final_stats(executed, start)
    return 0


def _report_crash(crash_dir: Path, data: bytes, trace: str) -> None:
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(" === Uncaught Python exception: ===")
    print(trace, end="")
    print(f"==ERROR: hypothesis engine: the harness failed on a {len(data)}-byte input")
    print(f"Test unit written to {path}", flush=True)


def _final_stats(executed: int, start: float) -> None:
    took = max(time.monotonic() - start, 1e-9)
    print(f"stat::number_of_executed_units: {executed}")
    print(f"stat::average_exec_per_sec:     {int(executed / took)}", flush=True)


# ---- replay ------------------------------------------------------------------------


def replay(name: str, files: Sequence[str]) -> int:
    harness = load(name)
    failed = 0
    for file in files:
        data = Path(file).read_bytes()
        try:
            harness.fuzz_one(data)
        except Exception:
            failed += 1
            print(f"FAIL {file} ({len(data)} bytes): {data!r}"[:400])
            traceback.print_exc()
        else:
            print(f"ok   {file}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__)
        return 2
    engine, name, rest = args[0], args[1], args[2:]
    if not __debug__:
        print("the harnesses assert: run without -O", file=sys.stderr)
        return 2
    if engine == "atheris":
        run_atheris(name, rest)
        return 0
    if engine == "replay":
        return replay(name, rest)
    if engine != "hypothesis":
        print(f"unknown engine {engine!r}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="tests.fuzz.worker hypothesis NAME")
    parser.add_argument("--crash-dir", type=Path, required=True)
    parser.add_argument("--time", type=float)
    parser.add_argument("--runs", type=int)
    opts = parser.parse_args(rest)
    return run_hypothesis(name, opts.crash_dir, opts.time, opts.runs)


if __name__ == "__main__":
    sys.exit(main())
