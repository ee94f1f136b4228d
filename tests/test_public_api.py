"""Every public name of the documented packages has a docstring (the API reference,
docs/api/, is built from them by Sphinx autodoc).

Public means listed in the package's `__all__`. A class or function needs its own
docstring (not the signature `dataclasses` writes, nor enum's default); a public method
or property of an exported class needs one, its own or the one of the method it
overrides (autodoc shows that one). A constant needs a doc comment where it is assigned:
`#:` on the line before or at the end of the line, as autodoc reads them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "docs" / "_ext"))
from reexports import defining_module

PACKAGES = [
    "trivmc",
    "trivmc.client",
    "trivmc.server",
    "trivmc.chardev",
    "trivmc.backends",
    "trivmc.protocol",
    "trivmc.control",
    "trivmc.transport",
]


def exported(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(package)
    names = module.__dict__.get("__all__")
    assert isinstance(names, list), f"{package} has no __all__ list"
    return [(name, getattr(module, name)) for name in names]


def own_doc(obj: type | object) -> str | None:
    doc = obj.__doc__
    if not isinstance(doc, str) or not doc.strip():
        return None
    name = getattr(obj, "__name__", "")
    if inspect.isclass(obj) and (doc.startswith(f"{name}(") or doc == "An enumeration."):
        return None  # written by dataclasses / enum, not by us
    return doc


def has_doc_comment(module: ModuleType, name: str) -> bool:
    """`name` is assigned at module level with a `#:` comment before or on the line
    (a re-export is followed to the module that assigns it)."""
    source = defining_module(importlib.import_module(module.__name__), name)
    lines = inspect.getsource(source).splitlines()
    for node in ast.parse("\n".join(lines)).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            return before.startswith("#:") or "#:" in lines[(node.end_lineno or 1) - 1]
    return False


def public_methods(cls: type) -> list[str]:
    out = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        func = attr.__func__ if isinstance(attr, staticmethod | classmethod) else attr
        func = func.fget if isinstance(func, property) else func
        if inspect.isfunction(func):
            out.append(name)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_have_docstrings(package: str) -> None:
    missing = []
    for name, obj in exported(package):
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if own_doc(obj) is None:
                missing.append(f"{package}.{name}")
        elif not has_doc_comment(importlib.import_module(package), name):
            missing.append(f"{package}.{name} (a constant: no `#:` doc comment)")
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


@pytest.mark.parametrize("package", PACKAGES)
def test_public_methods_have_docstrings(package: str) -> None:
    missing = []
    for name, obj in exported(package):
        if inspect.isclass(obj):
            for method in public_methods(obj):
                if not inspect.getdoc(getattr(obj, method)):
                    missing.append(f"{package}.{name}.{method} ({obj.__module__})")
    assert not missing, "public methods without a docstring:\n" + "\n".join(missing)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_only_public_existing_names(package: str) -> None:
    names = [name for name, _ in exported(package)]
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"
    private = [n for n in names if n.startswith("_") and n != "__version__"]
    assert not private, f"{package}.__all__ lists private names: {private}"
    assert package in sys.modules
