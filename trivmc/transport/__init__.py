"""Transports under SPICE's byte stream: TLS contexts and WebSocket framing.

Both sit between a socket and the link: a `trio.SSLStream` over the stdlib `ssl`
module, and `WebSocketStream`, SPICE bytes in WebSocket binary messages framed by
`wsproto`. The server and the client use the same pieces.
"""

from .tls import client_tls_context, server_tls_context
from .websocket import (
    WebSocketError,
    WebSocketStream,
    accept_websocket,
    connect_websocket,
)

__all__ = [
    "WebSocketError",
    "WebSocketStream",
    "accept_websocket",
    "client_tls_context",
    "connect_websocket",
    "server_tls_context",
]
