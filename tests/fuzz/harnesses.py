"""The harness registry: names, modules, and what every harness module provides.

A harness module `tests/fuzz/harness_<name>.py` defines:

- `fuzz_one(data: bytes) -> None`: run one input; return normally for any input the
  code under test handles as documented, raise (an AssertionError or the unexpected
  exception itself) otherwise;
- `seeds() -> dict[str, bytes]`: its seed corpus (`python -m tests.fuzz.make_corpus`);
- `MAX_LEN`: the longest input worth trying.

`HARNESSES` maps each name to the packages atheris instruments besides trivmc (the
third-party parsers trivmc relies on). The harnesses themselves are not instrumented:
their coverage would only say which input layouts were tried, at a cost per input.

This module imports no harness (the fuzz worker imports one under instrumentation).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

HARNESSES: dict[str, tuple[str, ...]] = {
    "link": (),
    "decoder": (),
    "lz4": (),
    "websocket": ("wsproto", "h11"),
    "channel": (),
}
SELFTEST = "selftest"  # fails on purpose: tests the runner's crash handling
FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"


class Harness(Protocol):
    MAX_LEN: int

    def fuzz_one(self, data: bytes) -> None: ...

    def seeds(self) -> dict[str, bytes]: ...


def module_name(name: str) -> str:
    if name not in HARNESSES and name != SELFTEST:  # a module name, not a path
        raise ValueError(f"unknown harness {name!r} (known: {', '.join(HARNESSES)})")
    return f"tests.fuzz.harness_{name}"


def instrumented_packages(name: str) -> list[str]:
    """What atheris instruments for harness `name`."""
    return ["trivmc", *HARNESSES.get(name, ())]


def load(name: str) -> Harness:
    module: ModuleType = importlib.import_module(module_name(name))
    return cast(Harness, module)


def corpus_dir(name: str) -> Path:
    return CORPUS_DIR / name


def seed_inputs(name: str) -> list[bytes]:
    """The committed seed corpus of `name`, in file-name order."""
    folder = corpus_dir(name)
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
