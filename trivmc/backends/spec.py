"""Backend specs (QEMU's -chardev vocabulary) -> backend factories."""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend
from .simple import EchoBackend, NullBackend, SourceBackend

BackendFactory = Callable[[], Backend]


class BackendSpecError(ValueError):
    """A backend spec that names no known backend or has bad arguments."""


def parse_backend(spec: str) -> BackendFactory:
    """A factory making a fresh backend for `spec` (echo | null | source:BYTES)."""
    kind, _, arg = spec.partition(":")
    if kind == "echo" and not arg:
        return EchoBackend
    if kind == "null" and not arg:
        return NullBackend
    if kind == "source":
        try:
            total = int(arg)
        except ValueError:
            raise BackendSpecError(f"source needs a byte count: {spec!r}") from None
        if total < 0:
            raise BackendSpecError(f"negative byte count: {spec!r}")
        return lambda: SourceBackend(total)
    raise BackendSpecError(f"unknown backend {spec!r}")
