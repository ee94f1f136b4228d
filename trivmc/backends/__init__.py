"""Chardev backends (QEMU's -chardev vocabulary) and `parse_backend(spec)`."""

from .base import Backend
from .connecting import TcpConnectBackend, UnixConnectBackend
from .listening import TcpListenBackend, UnixListenBackend
from .peer_bridge import StreamBackend
from .process import ExecBackend
from .simple import EchoBackend, FileBackend, NullBackend, SourceBackend, pattern
from .spec import BackendFactory, BackendSpecError, parse_backend

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
