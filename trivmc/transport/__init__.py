"""Transports under SPICE's byte stream: the plain-socket fast path, TLS and WebSocket.

`plainsocket` (byte I/O on a socket's fd), `tlssocket` (TLS on the fd, the server's
TLS port), TLS contexts (`tls`), and `WebSocketStream`, SPICE bytes in WebSocket binary
messages framed by `wsproto`. The WebSocket names are imported on first use, so a
server that never sees a browser does not load wsproto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tls import client_tls_context, server_tls_context

if TYPE_CHECKING:
    from .websocket import (
        WebSocketError,
        WebSocketStream,
        accept_websocket,
        connect_websocket,
    )

_WEBSOCKET = {"WebSocketError", "WebSocketStream", "accept_websocket", "connect_websocket"}


def __getattr__(name: str) -> Any:
    if name in _WEBSOCKET:
        from . import websocket

        return getattr(websocket, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WebSocketError",
    "WebSocketStream",
    "accept_websocket",
    "client_tls_context",
    "connect_websocket",
    "server_tls_context",
]
