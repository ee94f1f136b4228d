"""The diagrams of docs/structure.md stay in step with the code and docs/architecture.md.

- docs/diagrams/packages.dot draws exactly the imports between trivmc's packages (the
  three private helper modules drawn as one node, `helpers`).
- docs/diagrams/byte_path.dot names only files and `Class.method`s that exist, and
  exactly the files architecture.md's byte-path table lists for the current code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import trivmc

ROOT = Path(trivmc.__file__).parent
DOCS = ROOT.parent / "docs"
HELPERS = {"_groups", "_streams", "_trio_util"}


def package_of(parts: tuple[str, ...]) -> str:
    """The diagram node of a module path inside trivmc/ (parts after `trivmc`)."""
    top = parts[0].removesuffix(".py")
    return "helpers" if top in HELPERS else top


def code_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts == ("__main__.py",) or parts == ("__init__.py",):
            continue
        src = package_of(parts)
        package = ("trivmc", *parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(package[: len(package) - node.level + 1])
                    names.append(base + (node.module.split(".") if node.module else []))
                else:
                    names.append((node.module or "").split("."))
            elif isinstance(node, ast.Import):
                names += [alias.name.split(".") for alias in node.names]
            for name in names:
                if name[0] == "trivmc" and len(name) > 1:
                    dst = package_of((name[1],))
                    if dst != src:
                        edges.add((src, dst))
    return edges


def dot_edges(text: str) -> set[tuple[str, str]]:
    edges = set()
    for src, dsts in re.findall(r"^\s*(\w+)\s*->\s*\{?([\w\s]+?)\}?\s*;", text, re.M):
        edges |= {(src, dst) for dst in dsts.split()}
    return edges


def test_packages_diagram_matches_the_imports() -> None:
    drawn = dot_edges((DOCS / "diagrams" / "packages.dot").read_text())
    assert drawn == code_edges(), (
        f"drawn, not imported: {sorted(drawn - code_edges())}; "
        f"imported, not drawn: {sorted(code_edges() - drawn)}"
    )


def test_byte_path_names_what_exists() -> None:
    dot = (DOCS / "diagrams" / "byte_path.dot").read_text()
    # the graph without its comments; the line breaks in labels become spaces
    text = re.sub(r"^\s*//.*$", "", dot, flags=re.M).replace("\\n", " ")
    files = set(re.findall(r"\b(\w+/\w+\.py)\b", text))
    assert files, "no file named in byte_path.dot"
    missing = [f for f in sorted(files) if not (ROOT / f).is_file()]
    assert not missing, f"byte_path.dot names files that do not exist: {missing}"
    source = "\n".join(p.read_text() for p in ROOT.rglob("*.py"))
    for cls, method in re.findall(r"\b([A-Z]\w+)\.(\w+)\b", text):
        assert re.search(rf"^class {cls}\b", source, re.M), f"no class {cls}"
        assert re.search(rf"^\s+(async )?def {method}\b", source, re.M), f"no {cls}.{method}"

    architecture = (DOCS / "architecture.md").read_text()
    row = re.search(r"^\| after \| \d+: (.*?) \|", architecture, re.M)
    assert row, "architecture.md's byte-path table has no 'after' row"
    listed = set(re.findall(r"`(\w+/\w+\.py)`", row.group(1)))
    assert files == listed, (
        f"byte_path.dot and architecture.md disagree: only drawn {sorted(files - listed)}, "
        f"only listed {sorted(listed - files)}"
    )
