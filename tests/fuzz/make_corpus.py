"""Write the committed seed corpus: `python -m tests.fuzz.make_corpus [--check]`.

Each harness's `seeds()` builds its inputs (real link messages of spice-gtk from the
spec's worked example, framed message streams, LZ4 COMPRESSED_DATA bodies, WebSocket
upgrades and frames...) in the harness's own input layout; this writes them to
`tests/fuzz/corpus/<harness>/<name>`, replacing what was there. The inputs are
deterministic (a fixed link key, fixed tickets), so `--check` can tell whether the
committed corpus is what the harnesses make now. Inputs that `--grow-corpus` merged in
(named by their SHA-1, as libFuzzer names them) are kept and not checked.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .harnesses import HARNESSES, corpus_dir, load

GROWN = re.compile(r"[0-9a-f]{40}")


def generated_files(folder: Path) -> dict[str, bytes]:
    """The files of `folder` that the harness made (not merged in by the fuzzer)."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if not GROWN.fullmatch(p.name)}


def expected() -> dict[str, dict[str, bytes]]:
    return {name: load(name).seeds() for name in HARNESSES}


def differences() -> list[str]:
    """What differs between the committed corpus and the harnesses' seeds."""
    out: list[str] = []
    for name, seeds in expected().items():
        present = generated_files(corpus_dir(name))
        for file in sorted(seeds.keys() - present.keys()):
            out.append(f"{name}/{file}: missing")
        for file in sorted(present.keys() - seeds.keys()):
            out.append(f"{name}/{file}: not made by the harness")
        for file in sorted(seeds.keys() & present.keys()):
            if seeds[file] != present[file]:
                out.append(f"{name}/{file}: different bytes")
    return out


def write() -> None:
    for name, seeds in expected().items():
        folder = corpus_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        for file in generated_files(folder):
            (folder / file).unlink()
        for file, data in seeds.items():
            (folder / file).write_bytes(data)
        size = sum(map(len, seeds.values()))
        print(f"{folder}: {len(seeds)} inputs, {size} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.make_corpus")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    if parser.parse_args().check:
        diff = differences()
        print("\n".join(diff) or "the corpus is up to date")
        return 1 if diff else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
