"""Backend specs (QEMU's -chardev vocabulary) -> backend factories.

echo | null | source:BYTES
tcp:HOST:PORT[,reconnect=SECONDS][,drain=SECONDS]
                                       connect (per client, bounded backoff); a departed
                                       client's bytes get `drain` seconds to reach it
tcp-listen:HOST:PORT                   accept one peer at a time
unix:PATH[,reconnect=SECONDS][,drain=SECONDS]
unix-listen:PATH
file:PATH                              append what the client sends
exec:COMMAND                           a child per client (stdin/stdout)
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend
from .connecting import DEFAULT_RECONNECT, TcpConnectBackend, UnixConnectBackend
from .listening import TcpListenBackend, UnixListenBackend
from .peer_bridge import DEFAULT_DRAIN
from .process import ExecBackend
from .simple import EchoBackend, FileBackend, NullBackend, SourceBackend

#: What `parse_backend` returns: makes a new backend per call (per channel).
BackendFactory = Callable[[], Backend]


class BackendSpecError(ValueError):
    """A backend spec that names no known backend or has bad arguments."""


def _options(rest: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    main, *opts = rest.split(",")
    parsed: dict[str, str] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or key not in allowed:
            raise BackendSpecError(f"unknown option {opt!r}")
        parsed[key] = value
    return main, parsed


def _hostport(text: str, spec: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BackendSpecError(f"expected HOST:PORT in {spec!r}")
    return host.strip("[]"), int(port)


def _seconds(opts: dict[str, str], name: str, default: float, spec: str) -> float:
    try:
        value = float(opts.get(name, default))
    except ValueError:
        raise BackendSpecError(f"{name} needs seconds: {spec!r}") from None
    if value < 0:
        raise BackendSpecError(f"negative {name}: {spec!r}")
    return value


def parse_backend(spec: str) -> BackendFactory:
    """A factory making a fresh backend for `spec`; BackendSpecError when it is bad."""
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
    if kind in ("tcp", "unix"):
        main, opts = _options(arg, {"reconnect", "drain"})
        delay = _seconds(opts, "reconnect", DEFAULT_RECONNECT, spec)
        drain = _seconds(opts, "drain", DEFAULT_DRAIN, spec)
        if kind == "tcp":
            host, port = _hostport(main, spec)
            return lambda: TcpConnectBackend(host, port, delay, drain)
        if not main:
            raise BackendSpecError(f"unix needs a path: {spec!r}")
        return lambda: UnixConnectBackend(main, delay, drain)
    if kind == "tcp-listen":
        host, port = _hostport(arg, spec)
        return lambda: TcpListenBackend(host, port)
    if kind == "unix-listen" and arg:
        return lambda: UnixListenBackend(arg)
    if kind == "file" and arg:
        return lambda: FileBackend(arg)
    if kind == "exec" and arg.strip():
        return lambda: ExecBackend(arg)
    raise BackendSpecError(f"unknown backend {spec!r}")
