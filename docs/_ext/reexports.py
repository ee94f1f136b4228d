"""Following a package's re-exports to the module that defines a name (no Sphinx here:
`reexported_data.py` and tests/test_public_api.py both use it)."""

from __future__ import annotations

import ast
import importlib
import inspect
from types import ModuleType


def imported_from(module: ModuleType, name: str) -> ModuleType | None:
    """The module `module`'s source imports `name` from, if it does."""
    package = module.__name__ if hasattr(module, "__path__") else module.__package__ or ""
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            return importlib.import_module(f"{base}.{node.module}" if node.module else base)
    return None


def defining_module(module: ModuleType, name: str) -> ModuleType:
    """The module that assigns `name`, following re-exports from `module`."""
    while (origin := imported_from(module, name)) is not None:
        module = origin
    return module
