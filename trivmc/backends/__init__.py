"""Chardev backends (QEMU's -chardev vocabulary) and `parse_backend(spec)`."""

from .base import Backend
from .simple import EchoBackend, NullBackend, SourceBackend, pattern
from .spec import BackendFactory, BackendSpecError, parse_backend
from .stream import (
    ExecBackend,
    FileBackend,
    StreamBackend,
    TcpConnectBackend,
    TcpListenBackend,
    UnixConnectBackend,
    UnixListenBackend,
)

__all__ = [
    "Backend",
    "BackendFactory",
    "BackendSpecError",
    "EchoBackend",
    "ExecBackend",
    "FileBackend",
    "NullBackend",
    "SourceBackend",
    "StreamBackend",
    "TcpConnectBackend",
    "TcpListenBackend",
    "UnixConnectBackend",
    "UnixListenBackend",
    "parse_backend",
    "pattern",
]
