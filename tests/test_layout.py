"""The trivmc package's shape: no module over 400 lines, no import cycle between modules.

Imports are read from the source with `ast` (nothing is imported), and every import
statement counts wherever it stands: at module level, inside a function (a lazy import
hides a cycle, it does not remove one) and under `if TYPE_CHECKING:` (a type-only
import still ties the two modules together). `importlib.import_module` (the cli's
subcommand table) is not read.

An import names the module it depends on as follows:

- `import trivmc.a.b` and `from trivmc.a import b`, where `trivmc.a.b` is a module:
  that module.
- `from .x import name`, `from ..pkg.mod import name`, `from ..pkg import name`: the
  module that *defines* `name`. When the module imported from only re-exports it (it
  imports `name` itself, as a package `__init__` or a facade kept for an old import
  path does), the re-export is followed to the concrete module. So a module that
  imports `Server` from `trivmc.server` depends on `trivmc.server.server`, not on the
  package, and a cycle through a re-exporting `__init__` counts only if the concrete
  modules form one.
- `from . import name`, where `name` is defined in the package's `__init__` itself:
  that `__init__`.
- Importing `trivmc.a.b` runs `trivmc/a/__init__.py` first; that is not an edge (the
  `__init__`'s own imports are its edges).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import trivmc

ROOT = Path(trivmc.__file__).parent
PACKAGE = "trivmc"
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), str(MODULES[module]))


def absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute name `node` imports from, inside `module`."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@cache
def bindings(module: str) -> dict[str, tuple[str, str | None]]:
    """The names `module` binds at its top level by importing them: name -> (the
    module imported from, the name there; None when the name is that module)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            for alias in node.names:
                out[alias.asname or alias.name] = (source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out[alias.asname] = (alias.name, None)
    return out


def defining_module(module: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """The module `from <module> import <name>` depends on: a submodule called `name`,
    the module a re-exported `name` comes from (followed), or `module` itself."""
    bound = bindings(module).get(name)
    if bound is not None and module not in seen:
        source, original = bound
        if original is None:
            return source
        if source in MODULES:
            return defining_module(source, original, seen | {module})
        if f"{source}.{original}" in MODULES:
            return f"{source}.{original}"
    if f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """(the module depended on, line) for every import statement in `module`."""
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            for alias in node.names:
                if alias.name != "*" and f"{source}.{alias.name}" in MODULES:
                    yield f"{source}.{alias.name}", node.lineno
                elif source in MODULES:
                    target = source if alias.name == "*" else defining_module(source, alias.name)
                    yield target, node.lineno


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it depends on (itself excluded)."""
    return {m: {t for t, _ in imports_of(m) if t != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one
    cycle through them, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(one_cycle(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of `component` (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")


def test_the_graph_follows_re_exports() -> None:
    """The reading described above, on imports the package has."""
    graph = import_graph()
    assert "trivmc.server.server" in graph["trivmc.control.commands"]  # via server/__init__
    assert "trivmc.server" not in graph["trivmc.control.commands"]
    assert "trivmc.protocol.constants" in graph["trivmc.server.server"]
    assert "trivmc.cli" in graph["trivmc.cli.serve"]  # `from . import version`
    # a facade kept for an old import path is looked through, as an __init__ is
    assert "trivmc.backends.peer_bridge" in graph["trivmc.server.vmc"]  # DEFAULT_DRAIN
    assert "trivmc.backends.stream" not in graph["trivmc.server.vmc"]


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_modules_are_small() -> None:
    """Every module at most MAX_LINES lines; all offenders are listed at once."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = sorted(
        f"{MODULES[m].relative_to(ROOT.parent)}: {n}" for m, n in sizes.items() if n > MAX_LINES
    )
    assert not over, f"modules over {MAX_LINES} lines:\n" + "\n".join(over)


def test_no_two_public_classes_share_a_name() -> None:
    """A class name says which class it is, whichever package it is read in."""
    where: dict[str, list[str]] = {}
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(name)
    shared = {cls: mods for cls, mods in where.items() if len(mods) > 1}
    assert not shared, shared
