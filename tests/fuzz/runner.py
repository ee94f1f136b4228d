"""The fuzz runner: each harness in its own process, one after the other, then one
summary table. Exit status 1 when a harness failed (its input is kept and printed).

    python -m tests.fuzz [--time S] [--runs N] [--engine auto|atheris|hypothesis]
                         [--smoke] [--grow-corpus] [--workdir DIR] [-v] [HARNESS ...]
    python -m tests.fuzz --replay FILE HARNESS

`--time S` bounds each harness (S seconds per harness); `--runs N` stops a harness
after N inputs; whichever comes first. Neither: 60 s per harness. `--smoke` is
`--time 5` (CI). New corpus entries go to the work directory (default
`.nox/fuzz-work/`); `--grow-corpus` (atheris) afterwards merges those that add
coverage into the committed seed corpus.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harnesses import HARNESSES, SELFTEST, corpus_dir, load

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKDIR = ROOT / ".nox" / "fuzz-work"
DEFAULT_SECONDS = 60.0
SMOKE_SECONDS = 5.0
INPUT_TIMEOUT = 20  # seconds one input may take before libFuzzer calls it a hang
RSS_LIMIT_MB = 2048
FAILURE_PREFIXES = ("crash-", "timeout-", "oom-", "leak-")


@dataclass
class Result:
    name: str
    engine: str
    executed: int = 0
    seconds: float = 0.0
    exec_per_sec: int = 0
    corpus: int | None = None
    new_units: int | None = None
    returncode: int = 0
    artifacts: list[Path] = field(default_factory=list)
    log: Path | None = None

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.artifacts)


def atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def parse_output(text: str, result: Result) -> None:
    """Fill `result` from libFuzzer's output (or the hypothesis worker's imitation)."""
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.MULTILINE))
    if "number_of_executed_units" in stats:
        result.executed = int(stats["number_of_executed_units"])
    else:  # killed before its final stats: the last status line
        counts = re.findall(r"^#(\d+)\s", text, re.MULTILINE)
        result.executed = int(counts[-1]) if counts else 0
    if "new_units_added" in stats:
        result.new_units = int(stats["new_units_added"])
    corp = re.findall(r"\bcorp: (\d+)/", text)
    if corp:
        result.corpus = int(corp[-1])
    for path in re.findall(r"Test unit written to (\S+)", text):
        if Path(path).name.startswith(FAILURE_PREFIXES):
            result.artifacts.append(Path(path))


def _command(
    name: str, engine: str, args: argparse.Namespace, scratch: Path, crashes: Path
) -> list[str]:
    cmd = [sys.executable, "-m", "tests.fuzz.worker", engine, name]
    if engine == "hypothesis":
        cmd += ["--crash-dir", str(crashes)]
        if args.time is not None:
            cmd += ["--time", str(args.time)]
        if args.runs is not None:
            cmd += ["--runs", str(args.runs)]
        return cmd
    max_len = load(name).MAX_LEN
    cmd += [
        f"-artifact_prefix={crashes}/",
        f"-max_len={max_len}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        "-print_final_stats=1",
    ]
    if args.time is not None:
        cmd.append(f"-max_total_time={max(1, round(args.time))}")
    if args.runs is not None:
        cmd.append(f"-runs={args.runs}")
    cmd.append(str(scratch))
    if corpus_dir(name).is_dir():
        cmd.append(str(corpus_dir(name)))
    return cmd


def run_one(name: str, engine: str, args: argparse.Namespace) -> Result:
    work = args.workdir / name
    scratch, crashes = work / "corpus", work / "crashes"
    scratch.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    log = work / f"{engine}.log"
    cmd = _command(name, engine, args, scratch, crashes)
    limit = None if args.time is None else args.time * 1.5 + 120
    result = Result(name, engine, log=log)
    print(f"== {name} ({engine}): log {log}", flush=True)
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            result.returncode = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.returncode = proc.wait()
            out.write(f"\nrunner: killed after {limit:.0f} s\n")
        except KeyboardInterrupt:
            proc.terminate()
            result.returncode = proc.wait()
            raise
    result.seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    if args.verbose:
        print(text)
    parse_output(text, result)
    result.exec_per_sec = int(result.executed / result.seconds) if result.seconds else 0
    if engine == "atheris" and args.grow_corpus and not result.failed:
        _merge(name, scratch, work)
    return result


def _merge(name: str, scratch: Path, work: Path) -> None:
    """Add to the seed corpus the scratch inputs that bring new coverage (libFuzzer's
    -merge=1 keeps a minimal set)."""
    seeds = corpus_dir(name)
    before = len(list(seeds.iterdir()))
    cmd = [sys.executable, "-m", "tests.fuzz.worker", "atheris", name, "-merge=1"]
    cmd += [str(seeds), str(scratch)]
    with (work / "merge.log").open("w") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    added = len(list(seeds.iterdir())) - before
    print(f"   {name}: {added} inputs merged into {seeds.relative_to(ROOT)}")


def summary(results: list[Result]) -> str:
    head = f"{'harness':<10} {'engine':<10} {'inputs':>11} {'time s':>8} {'exec/s':>8}"
    head += f" {'corpus':>7} {'new':>6}  result"
    lines = [head, "-" * len(head)]
    for r in results:
        corpus = "-" if r.corpus is None else str(r.corpus)
        new = "-" if r.new_units is None else str(r.new_units)
        if not r.failed:
            verdict = "ok"
        elif r.artifacts:
            verdict = "FAILED: " + ", ".join(str(p) for p in r.artifacts)
        else:
            verdict = f"FAILED: exit status {r.returncode}, see {r.log}"
        lines.append(
            f"{r.name:<10} {r.engine:<10} {r.executed:>11,} {r.seconds:>8.1f}"
            f" {r.exec_per_sec:>8,} {corpus:>7} {new:>6}  {verdict}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS", help=", ".join(HARNESSES))
    parser.add_argument("--time", type=float, help="seconds per harness")
    parser.add_argument("--runs", type=int, help="inputs per harness")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_SECONDS:.0f} s each")
    parser.add_argument(
        "--grow-corpus", action="store_true", help="merge new coverage into the seed corpus"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--replay", type=Path, metavar="FILE", help="run HARNESS on FILE")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the logs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.time = SMOKE_SECONDS
    if args.time is None and args.runs is None:
        args.time = DEFAULT_SECONDS
    for name in args.harnesses:
        if name not in HARNESSES and name != SELFTEST:
            parser.error(f"unknown harness {name!r} (known: {', '.join(HARNESSES)})")
    if args.replay and len(args.harnesses) != 1:
        parser.error("--replay FILE needs exactly one HARNESS")
    args.workdir = args.workdir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay:
        cmd = [sys.executable, "-m", "tests.fuzz.worker", "replay", args.harnesses[0]]
        return subprocess.call([*cmd, str(args.replay.resolve())], cwd=ROOT)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "hypothesis"
        if engine == "hypothesis":
            print("atheris is not installed: using the hypothesis engine", flush=True)
    elif engine == "atheris" and not atheris_available():
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    names = args.harnesses or list(HARNESSES)
    bound = f"{args.time:g} s" if args.time is not None else ""
    if args.runs is not None:
        bound += (" or " if bound else "") + f"{args.runs:,} inputs"
    print(f"fuzzing {', '.join(names)} with {engine}, {bound} per harness", flush=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    results: list[Result] = []
    try:
        for name in names:
            results.append(run_one(name, engine, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print()
    print(summary(results))
    failed = [r for r in results if r.failed]
    for r in failed:
        for path in r.artifacts:
            print(f"\n{r.name}: failing input kept at {path}")
            print(f"  replay: python -m tests.fuzz --replay {path} {r.name}")
    if failed or len(results) < len(names):
        return 1
    return 0
