"""Sockets of the server: its listeners (configured and inherited), listening on TCP
and unix addresses with errors that name the address, keepalive as spice-server sets
it, closing a connection quietly, and printing addresses."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Sequence

import trio

from .config import ServerConfig

CLOSE_TIMEOUT = 1.0


async def close_quietly(stream: trio.abc.AsyncResource) -> None:
    """Close a connection's stream within CLOSE_TIMEOUT; a peer that is already gone
    (or a TLS/WebSocket goodbye that fails) is not an error."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def set_keepalive(sock: trio.socket.SocketType, idle: float) -> None:
    """TCP keepalive as spice-server sets it: SO_KEEPALIVE, and the first probe after
    `idle` seconds of silence (TCP_KEEPIDLE; spice-server's is 10 minutes). The probe
    interval and count stay the system's."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(idle)))


class ListenError(OSError):
    """An address the server cannot listen on; its text names the address."""

    def __str__(self) -> str:
        return str(self.strerror)


async def listen_tcp(host: str, port: int) -> list[trio.SocketListener]:
    """Listeners on host:port; an OSError names the address (a port out of range,
    a host that does not resolve, an address in use)."""
    where = format_address((host, port))
    if not 0 <= port <= 65535:
        raise ListenError(errno.EINVAL, f"cannot listen on {where}: port out of range (0-65535)")
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        raise ListenError(e.errno, f"cannot listen on {where}: {e.strerror or e}") from e


async def listen_unix(
    path: str, *, private: bool = False, backlog: int = 128
) -> trio.socket.SocketType:
    """A listening unix socket at `path` (a stale socket file there is replaced);
    `private` makes it the owner's alone (created under umask 077, so there is no
    moment when others may connect)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o077) if private else None
    try:
        await sock.bind(path)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ListenError(e.errno, f"cannot listen on {path}: {e.strerror or e}") from e
    finally:
        if old_mask is not None:
            os.umask(old_mask)
    return sock


def local_address(sock: trio.socket.SocketType) -> object:
    """A listening socket's address as `open_listeners` gives it: (host, port), a unix
    path, or @NAME for an abstract unix socket."""
    addr = sock.getsockname()
    if isinstance(addr, bytes):
        return "@" + os.fsdecode(addr[1:])
    return addr[:2] if isinstance(addr, tuple) else addr


def format_address(addr: object) -> str:
    """host:port for an IP address tuple, the path for a unix socket."""
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


async def open_listeners(
    config: ServerConfig, inherited: Sequence[tuple[socket.socket, bool]] = ()
) -> list[tuple[trio.socket.SocketType, object, bool]]:
    """(listening socket, bound address, is TLS) for every inherited socket, then
    every address `config` names; the inherited ones are closed if this fails."""
    out: list[tuple[trio.socket.SocketType, object, bool]] = []
    try:
        for std, secure in inherited:
            if secure and config.tls is None:
                raise ValueError("a TLS listener needs a TLS context (certificate and key)")
            sock = trio.socket.from_stdlib_socket(std)
            out.append((sock, local_address(sock), secure))
        for addresses, secure in ((config.listen, False), (config.tls_listen, True)):
            for host, port in addresses:
                out += [
                    (lst.socket, lst.socket.getsockname()[:2], secure)
                    for lst in await listen_tcp(host, port)
                ]
        for path in config.unix:
            out.append((await listen_unix(path), path, False))
    except BaseException:
        for sock, _, _ in out:
            sock.close()
        for std, _ in inherited:
            std.close()
        raise
    return out
