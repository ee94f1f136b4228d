"""The client package's shape: no import cycle between its modules, no module over 400
lines, and error types that keep the builtin bases callers catch."""

from __future__ import annotations

import re
from pathlib import Path

import trivmc.client
from trivmc.client import ChannelNotFound, MainChannelClosed

CLIENT = Path(trivmc.client.__file__).parent


def imports() -> dict[str, set[str]]:
    pattern = re.compile(r"^from \.(\w+) import", re.M)
    return {p.stem: set(pattern.findall(p.read_text())) for p in CLIENT.glob("*.py")}


def test_no_import_cycle() -> None:
    graph = imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph.get(name, set()):
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_modules_are_small() -> None:
    for p in CLIENT.glob("*.py"):
        assert len(p.read_text().splitlines()) <= 400, p.name


def test_errors_keep_builtin_bases() -> None:
    assert issubclass(ChannelNotFound, LookupError)
    assert issubclass(MainChannelClosed, ConnectionError)
