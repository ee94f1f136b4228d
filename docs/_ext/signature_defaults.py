"""A Sphinx extension: default values whose ``repr`` is not Python source are written
as source in autodoc signatures.

Sphinx parses a signature as Python to link its annotations; a default such as a
dataclass field's ``<factory>`` or ``<built-in function monotonic_ns>`` makes the
parse fail, and the fallback splits the signature at every comma (``list[tuple[str``
then looks like a type of its own). Such a default is written as the call or name it
stands for: ``field(default_factory=list)`` as ``list()``, a function as its
qualified name.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sphinx.application import Sphinx

FUNCTION_REPR = re.compile(r"<(?:built-in )?function ([\w.]+)(?: at 0x[0-9a-f]+)?>")


def factory_source(factory: Any) -> str:
    module = getattr(factory, "__module__", "builtins")
    name = getattr(factory, "__qualname__", "...")
    return f"{name}()" if module == "builtins" else f"{module}.{name}()"


def process_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    if not signature or "<" not in signature:
        return None
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING:
                signature = re.sub(
                    rf"(\b{field.name}: [^=]*= )<factory>",
                    lambda m, f=field: m.group(1) + factory_source(f.default_factory),
                    signature,
                )
    signature = FUNCTION_REPR.sub(lambda m: m.group(1), signature)
    return signature, return_annotation


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", process_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
