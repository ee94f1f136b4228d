"""A Sphinx extension for ``nitpicky = True`` with ``default_role = "py:obj"``: what a
docstring writes in single backticks that is not an API name.

trivmc's docstrings put in single backticks both cross references (`Server`,
`trio.Event`) and the names of the documented object's own parameters, fields and
sibling modules (``def read(self, max_size)``: "at most `max_size` bytes"). With the
default role every one of them is a ``py:obj`` reference; the second kind has nothing
to link to. Two rules, nothing else:

- resolve: a capitalised name (`ProtocolError`, `HalfCloseableStream.send_eof`) that
  no module context finds is linked when exactly one object's full name ends with it
  (``.ProtocolError``), as Sphinx does for ``.Name`` references: trivmc's documented
  objects first, else the intersphinx inventories (trio's, Python's); anything
  ambiguous or unknown still warns;
- quiet: a plain identifier (or ``name.attribute``) whose first name is local to the
  object whose docstring it is in is a name there, not a reference: a parameter of the
  function, a parameter, field, attribute or method (or a method's parameter) of the
  class or of the method's class, a submodule of the package. It stays code text and
  does not warn.

Everything else unresolved warns as usual (conf.py's ``nitpick_ignore`` lists the
exceptions, each group with its reason). The docstring is found from the reference's
source, ``...:docstring of trivmc.x.y.Name``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from typing import Any

from docutils.nodes import Element
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.domains import Domain
from sphinx.environment import BuildEnvironment
from sphinx.ext import intersphinx

IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
CAPITALISED = re.compile(r"[A-Z]\w*(\.[A-Za-z_]\w*)?")
DOCSTRING_OF = re.compile(r"docstring of ([\w.]+)$")


def documented_object(node: Element) -> object | None:
    """The object whose docstring holds `node`, from the node's source."""
    match = DOCSTRING_OF.search(node.source or "")
    if match is None:
        return None
    path = match.group(1)
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def parameters(obj: object) -> set[str]:
    func = obj.fget if isinstance(obj, property) else obj
    try:
        return set(inspect.signature(func).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return set()


def local_names(obj: object) -> set[str]:
    """The parameters of a function; the parameters, fields and attributes of a class;
    the submodules of a package."""
    if inspect.ismodule(obj):
        if not hasattr(obj, "__path__"):
            return set()
        return {info.name for info in pkgutil.iter_modules(obj.__path__)}
    names = parameters(obj)
    if inspect.isclass(obj):
        for klass in obj.__mro__[:-1]:
            names |= set(vars(klass).get("__annotations__", {}))
            for attr, value in vars(klass).items():
                if attr.startswith("__") and attr != "__init__":
                    continue
                names.add(attr)
                value = getattr(value, "__func__", value)
                if inspect.isfunction(value) or isinstance(value, property):
                    names |= parameters(value) | assigned_attributes(value)
        if dataclasses.is_dataclass(obj):
            names |= {f.name for f in dataclasses.fields(obj)}
    else:
        owner = defining_class(obj)
        if owner is not None:
            names |= local_names(owner)
    return names - {"self", "cls", "__init__"}


def defining_class(func: object) -> type | None:
    """The class a method or property is defined in."""
    func = func.fget if isinstance(func, property) else func
    qualname = getattr(func, "__qualname__", "")
    module = inspect.getmodule(func)
    if "." not in qualname or module is None:
        return None
    owner: Any = module
    for part in qualname.split(".")[:-1]:
        owner = getattr(owner, part, None)
    return owner if inspect.isclass(owner) else None


def assigned_attributes(func: object) -> set[str]:
    """The names `func` assigns as ``self.name = ...``."""
    try:
        source = inspect.getsource(func)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return set()
    return set(re.findall(r"self\.([A-Za-z_]\w*)\s*(?::[^=\n]*)?=", source))


def on_missing_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    """Link a capitalised name to the one object, trivmc's or in an intersphinx
    inventory, whose full name ends with it."""
    if node.get("refdomain") != "py" or node.get("reftype") not in ("obj", "class", "meth"):
        return None
    target = node["reftarget"]
    if not CAPITALISED.fullmatch(target):
        return None
    suffix = f".{target}"
    domain = env.get_domain("py")
    # an object autodoc documents under its package also has its defining module's
    # name (``:canonical:``): one object is one (page, anchor), named by its shortest
    local_objects: dict[tuple[str, str], str] = {}
    for name, _, _, docname, anchor, _ in domain.get_objects():
        if name.startswith("trivmc.") and name.endswith(suffix):
            known = local_objects.setdefault((docname, anchor), name)
            local_objects[docname, anchor] = min(known, name, key=len)
    local = set(local_objects.values())
    inventory = intersphinx.InventoryAdapter(env).main_inventory
    remote = {
        name
        for objtype, objects in inventory.items()
        if objtype.startswith("py:")
        for name in objects
        if name.endswith(suffix)
    }
    # a trivmc name first: Python's inventory has its own ProtocolError
    found = local or remote
    if len(found) != 1:
        return None
    (full,) = found
    saved = {key: node.get(key) for key in ("reftarget", "py:module", "py:class")}
    node["reftarget"] = full
    node.attributes.pop("py:module", None)
    node.attributes.pop("py:class", None)
    if local:
        ref = domain.resolve_xref(env, node["refdoc"], app.builder, "obj", full, node, contnode)
    else:
        ref = intersphinx.missing_reference(app, env, node, contnode)
    if ref is None:  # as it was, so that the warning names what the docstring wrote
        node.attributes.update({key: value for key, value in saved.items() if value is not None})
    return ref


def on_warn_missing_reference(app: Sphinx, domain: Domain | None, node: pending_xref) -> bool:
    """Quiet a plain identifier that is a local name of the documented object."""
    if domain is None or domain.name != "py" or node.get("reftype") != "obj":
        return False
    first, *rest = node["reftarget"].split(".")
    if not IDENTIFIER.fullmatch(first) or not all(IDENTIFIER.fullmatch(p) for p in rest):
        return False
    obj = documented_object(node)
    return obj is not None and first in local_names(obj)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", on_missing_reference)
    app.connect("warn-missing-reference", on_warn_missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
