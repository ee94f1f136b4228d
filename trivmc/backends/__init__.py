"""Chardev backends (QEMU's -chardev vocabulary) and `parse_backend(spec)`."""

from .base import Backend
from .simple import EchoBackend, NullBackend, SourceBackend, pattern
from .spec import BackendFactory, BackendSpecError, parse_backend

__all__ = [
    "Backend",
    "BackendFactory",
    "BackendSpecError",
    "EchoBackend",
    "NullBackend",
    "SourceBackend",
    "parse_backend",
    "pattern",
]
