"""A Sphinx extension writing an intersphinx inventory for the installed trio.

The docs build runs without internet access, so intersphinx cannot download
https://trio.readthedocs.io/en/stable/objects.inv. Instead, when the configuration is
read (before intersphinx loads its inventories), this writes an inventory (Sphinx's
inventory format version 2: four header lines, then zlib-compressed lines
``name domain:role priority uri dispname``) from the trio that is installed, by
introspection, and points each public name at the page of trio's documentation that
describes it:

- ``trio.lowlevel`` -> reference-lowlevel.html, ``trio.testing`` -> reference-testing.html;
- ``trio.abc``, ``trio.socket`` and the stream, socket, file, path, process and SSL
  names of ``trio`` -> reference-io.html;
- everything else (nurseries, cancellation, synchronization, threads) ->
  reference-core.html.

Each anchor is the object's full dotted name, as Sphinx's Python domain writes it.
The inventory lands at ``config.trio_inventory_path`` (relative to the docs' directory)
and conf.py's ``intersphinx_mapping`` reads it from there. Nothing is hand-written,
so a newer trio gives a matching inventory on the next build.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config

MODULES = ["trio", "trio.abc", "trio.socket", "trio.lowlevel", "trio.testing"]
MODULES += ["trio.from_thread", "trio.to_thread"]
IO_NAMES = re.compile(r"stream|socket|tcp|unix|ssl|dtls|listener|file|path|process|aclose", re.I)


def page(module: str, name: str) -> str:
    """The page of trio's docs that documents `module.name`."""
    if module == "trio.lowlevel":
        return "reference-lowlevel.html"
    if module == "trio.testing":
        return "reference-testing.html"
    if module in ("trio.abc", "trio.socket") or IO_NAMES.search(name):
        return "reference-io.html"
    return "reference-core.html"


def role(obj: object) -> str | None:
    if inspect.ismodule(obj):
        return None
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def entries() -> dict[str, tuple[str, str]]:
    """Every public trio name: full name -> (py role, uri relative to the docs' root)."""
    out: dict[str, tuple[str, str]] = {}
    for modname in MODULES:
        module = importlib.import_module(modname)
        out[modname] = ("module", f"{page(modname, '')}#module-{modname}")
        for name in sorted(getattr(module, "__all__", None) or dir(module)):
            if name.startswith("_"):
                continue
            obj = getattr(module, name, None)
            kind = role(obj)
            if kind is None:
                continue
            full = f"{modname}.{name}"
            uri = page(modname, name)
            out.setdefault(full, (kind, f"{uri}#{full}"))
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    member = "attribute" if isinstance(value, property) else "method"
                    if not (member == "attribute" or callable(value)):
                        continue
                    out.setdefault(f"{full}.{attr}", (member, f"{uri}#{full}.{attr}"))
    return out


def write_inventory(path: Path, version: str) -> None:
    lines = [f"{name} py:{kind} 1 {uri} -\n" for name, (kind, uri) in sorted(entries().items())]
    header = (
        "# Sphinx inventory version 2\n"
        "# Project: Trio\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode(), 9))


def on_config_inited(app: Sphinx, config: Config) -> None:
    import trio

    write_inventory(Path(app.confdir) / config.trio_inventory_path, trio.__version__)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("trio_inventory_path", "_build/inventories/trio.inv", "env")
    # intersphinx reads its inventories later, when the builder starts
    app.connect("config-inited", on_config_inited, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
