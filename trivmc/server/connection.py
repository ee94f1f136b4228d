"""One accepted connection on its way to the link: its record (`ConnInfo`), its socket
options, the TLS handshake, and the sniff of its first bytes (SPICE or a WebSocket
upgrade). Each step that fails logs one line and ends only this connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import trio

from ..transport.tlssocket import TLSSocketStream
from .link_driver import LINK_RECEIVE
from .sockets import set_keepalive

# a connection's log lines are the server's, as they were before this module
log = logging.getLogger("trivmc.server.server")

SPICE_MAGIC = b"REDQ"
HTTP_GET = b"GET "


@dataclass
class ConnInfo:
    """What a connection came over: for logs, the link policy and the LZ4 rules."""

    peer: str
    is_unix: bool
    secure: bool
    websocket: bool
    serial: int = 0
    server_info: dict[str, Any] | None = None  # QEMU's SpiceBasicInfo of both ends
    client_info: dict[str, Any] | None = None


def client_stream(sock: trio.socket.SocketType, keepalive: float | None) -> trio.SocketStream:
    """The stream of an accepted socket, with TCP_NODELAY and keepalive (`keepalive`
    seconds; 0 or None: off) set, as spice-server does; a failing option is not the
    connection's end."""
    if sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if keepalive:
            set_keepalive(sock, keepalive)
    return trio.SocketStream(sock)


async def tls_handshake(
    sock: trio.SocketStream, context: ssl.SSLContext, timeout: float, conn: ConnInfo
) -> TLSSocketStream | None:
    """The TLS server handshake, bounded by `timeout`; None (logged) when it fails or
    stalls. The TLS stream owns the socket from the start: it is closed on every way
    out but success."""
    tls = TLSSocketStream.wrap(sock, context, server_side=True)
    try:
        with trio.move_on_after(timeout):
            await tls.do_handshake()
            return tls
        log.warning("%s: TLS handshake not finished in %.0f s: dropped", conn.peer, timeout)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        log.warning("%s: TLS handshake failed: %s", conn.peer, e.__cause__ or e)
    except BaseException:
        tls.close()
        raise
    tls.close()
    return None


async def sniff(
    stream: trio.abc.Stream, conn: ConnInfo, websocket: bool
) -> tuple[trio.abc.Stream, bytes | None]:
    """Read the first bytes: with `websocket`, `GET ` starts a WebSocket upgrade (the
    stream returned is then the WebSocket one, and `conn` says so); anything else is
    the SPICE link. The bytes read are returned (None when the peer closed first)."""
    initial = b""
    while len(initial) < 4 and (
        initial == SPICE_MAGIC[: len(initial)] or initial == HTTP_GET[: len(initial)]
    ):
        data = await stream.receive_some(LINK_RECEIVE)
        if not data:
            log.info("%s: closed before the link", conn.peer)
            return stream, None
        initial += data
    if websocket and initial.startswith(HTTP_GET):
        from ..transport.websocket import accept_websocket  # wsproto once one arrives

        ws = await accept_websocket(stream, initial)
        conn.websocket = True
        conn.peer += " websocket"
        log.info("%s: WebSocket upgrade accepted", conn.peer)
        return ws, b""
    return stream, initial
