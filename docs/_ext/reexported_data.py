"""A Sphinx extension: the constants and type aliases a package re-exports (its
`__all__` names that are neither classes nor functions) are documented on the
package's API page with the ``#:`` doc comment written where they are assigned.

autodoc reads ``#:`` comments only from the source of the module it documents, and a
package's ``__init__`` merely imports these names; this follows each import (as
tests/test_public_api.py does) to the module that assigns the name and takes its doc
comment from there, with Sphinx's own source analyzer.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

from reexports import imported_from
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer


def doc_comment(module: ModuleType, name: str) -> list[str]:
    """The ``#:`` doc comment of `name`, from the module that assigns it."""
    while (origin := imported_from(module, name)) is not None:
        module = origin
    docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
    return list(docs.get(("", name), []))


def data_names(module: ModuleType) -> list[str]:
    """The names of `module.__all__` that are data (not classes, functions, modules)."""
    return [
        name
        for name in getattr(module, "__all__", [])
        if not name.startswith("__")
        and not inspect.isclass(value := getattr(module, name))
        and not inspect.isroutine(value)
        and not inspect.ismodule(value)
    ]


def process_docstring(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """A package's docstring gets an ``autodata`` entry per public constant; each such
    entry's text is the doc comment where the constant is assigned."""
    if what == "module" and isinstance(obj, ModuleType) and hasattr(obj, "__path__"):
        names = data_names(obj)
        if names:
            lines += ["", ".. rubric:: Constants and type aliases", ""]
            lines += [f".. autodata:: {name}.{attr}" for attr in names]
    elif what == "data":
        modname, _, attr = name.rpartition(".")
        comment = doc_comment(importlib.import_module(modname), attr)
        if comment:
            lines[:] = comment


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", process_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
