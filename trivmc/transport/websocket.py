"""SPICE over WebSocket (what spice-html5 speaks): a trio stream of binary messages.

`wsproto` does all the WebSocket work: the HTTP upgrade, masking, fragmentation,
ping/pong and close codes. This module only moves bytes and bounds them:

- the HTTP upgrade request may be at most `MAX_UPGRADE_REQUEST` bytes;
- frame payloads reach the stream in pieces no larger than one socket read, so a
  huge (or never-ending) frame never makes trivmc buffer more than `RECEIVE_SIZE`;
- text messages are refused (close code 1003): SPICE is binary;
- no extension (permessage-deflate) is accepted, so nothing is inflated.

SPICE's message boundaries need not match WebSocket's: the stream is a byte stream.
"""

from __future__ import annotations

import logging

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._streams import ConflictDetector, check_max_bytes
from ..protocol import ProtocolError

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
MAX_UPGRADE_REQUEST = 16 * 1024
SPICE_SUBPROTOCOL = "binary"  # what spice-html5 asks for


class WebSocketError(ProtocolError):
    """The peer broke the WebSocket protocol (bad upgrade, text data, bad frames)."""


class WebSocketStream(trio.abc.Stream):
    """A byte stream carried in WebSocket binary messages over `transport`.

    Guarantees: bytes come out in order and unchanged; pings are answered; a close
    frame from the peer is answered and reads as end of stream; `close_code` holds the
    code the peer closed with (1006 when it vanished without a close frame). It keeps
    trio's stream contract (checked by `trio.testing.check_two_way_stream`): two tasks
    sending (or two receiving) at once get `trio.BusyResourceError`; `receive_some(0)`
    is a ValueError; every call is a checkpoint; after `aclose` every call raises
    `trio.ClosedResourceError`.
    """

    def __init__(self, transport: trio.abc.Stream, ws: WSConnection) -> None:
        self.transport = transport
        self._ws = ws
        self._inbox = bytearray()
        self._eof = False
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()  # the user's sends and our answers
        self._sending = ConflictDetector("another task is sending on this websocket")
        self._receiving = ConflictDetector("another task is receiving on this websocket")
        self.close_code: int | None = None

    # ---- sending -----------------------------------------------------------------

    async def _transmit(self, data: bytes) -> None:
        if data:
            async with self._send_lock:
                await self.transport.send_all(data)

    def _frame(self, event: Event) -> bytes:
        try:
            return self._ws.send(event)
        except LocalProtocolError as e:
            raise trio.BrokenResourceError(f"websocket is {self._ws.state.name}") from e

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as one binary message (nothing for b"")."""
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("websocket stream is closed")
            if not data:
                await trio.lowlevel.checkpoint()
                return
            try:
                await self._transmit(self._frame(BytesMessage(data=bytes(data))))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                if self._closed:  # closed by another task meanwhile
                    raise trio.ClosedResourceError("websocket stream is closed") from e
                raise

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("websocket stream is closed")
            await self.transport.wait_send_all_might_not_block()

    # ---- receiving ---------------------------------------------------------------

    async def _answer(self, event: Event) -> None:
        """Answer a ping or a close frame. A peer already gone is not an error here:
        what it sent before stays readable, and the next read or send finds it gone."""
        try:
            await self._transmit(self._frame(event))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.debug("websocket answer not sent: %s", e)

    async def _handle_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._inbox += event.data
            elif isinstance(event, Ping):
                await self._answer(event.response())
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                self._eof = True
                if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    await self._answer(event.response())
                if event.code not in (CloseReason.NORMAL_CLOSURE, CloseReason.GOING_AWAY):
                    log.info("websocket closed by peer: %s %s", event.code, event.reason or "")
            elif isinstance(event, TextMessage):
                self._eof = True
                await self._transmit(
                    self._frame(CloseConnection(CloseReason.UNSUPPORTED_DATA, "binary only"))
                )
                raise WebSocketError("websocket text message: SPICE needs binary messages")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_max_bytes(max_bytes)
        with self._receiving:
            if self._closed:
                raise trio.ClosedResourceError("websocket stream is closed")
            try:
                return await self._receive(max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                if self._closed:  # closed by another task meanwhile
                    raise trio.ClosedResourceError("websocket stream is closed") from e
                raise

    async def _receive(self, max_bytes: int | None) -> bytes:
        if self._inbox or self._eof:
            await trio.lowlevel.checkpoint()
        while not self._inbox:
            if self._eof:
                return b""
            data = await self.transport.receive_some(RECEIVE_SIZE)
            if not data:
                self.close_code = CloseReason.ABNORMAL_CLOSURE
                self._eof = True
                return b""
            self._ws.receive_data(bytes(data))
            await self._handle_events()
        n = len(self._inbox) if max_bytes is None else min(max_bytes, len(self._inbox))
        out = bytes(self._inbox[:n])
        del self._inbox[:n]
        return out

    # ---- closing -----------------------------------------------------------------

    async def aclose(self) -> None:
        """Send a normal close frame (if the connection is still open) and close the
        transport; never raises for a peer that is already gone. Closing again is a
        checkpoint and nothing else."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._ws.state is ConnectionState.OPEN:
                await self._transmit(self._ws.send(CloseConnection(CloseReason.NORMAL_CLOSURE)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
            pass
        finally:
            await self.transport.aclose()


async def accept_websocket(transport: trio.abc.Stream, initial: bytes = b"") -> WebSocketStream:
    """Answer the HTTP upgrade whose first bytes are `initial` (the rest is read from
    `transport`); return the open stream. A bad request gets an HTTP 400 and
    `WebSocketError`. Accepts the `binary` subprotocol when offered, no extensions."""
    ws = WSConnection(ConnectionType.SERVER)
    data, seen = initial, 0
    while True:
        seen += len(data)
        if seen > MAX_UPGRADE_REQUEST:
            raise WebSocketError(f"HTTP upgrade request longer than {MAX_UPGRADE_REQUEST} bytes")
        try:
            if data:  # wsproto (h11) takes b"" as the end of the stream
                ws.receive_data(data)
        except (RemoteProtocolError, ValueError) as e:
            # wsproto decodes some headers itself (Host as IDNA): a ValueError (such as
            # UnicodeDecodeError) is a bad request too, answered like the others
            hint = e.event_hint if isinstance(e, RemoteProtocolError) else RejectConnection()
            if isinstance(hint, RejectConnection):
                try:
                    await transport.send_all(ws.send(hint))
                except (trio.BrokenResourceError, LocalProtocolError):
                    pass
            raise WebSocketError(f"bad HTTP upgrade: {e}") from None
        for event in ws.events():  # lazily, as in connect_websocket
            if isinstance(event, Request):
                sub = SPICE_SUBPROTOCOL if SPICE_SUBPROTOCOL in event.subprotocols else None
                await transport.send_all(ws.send(AcceptConnection(subprotocol=sub)))
                stream = WebSocketStream(transport, ws)
                await stream._handle_events()  # frames that came with the request
                return stream
        data = bytes(await transport.receive_some(4096))
        if not data:
            raise WebSocketError("peer closed during the HTTP upgrade")


async def connect_websocket(
    transport: trio.abc.Stream, host: str, target: str = "/"
) -> WebSocketStream:
    """The client side: send the upgrade request (subprotocol `binary`, as spice-html5)
    and wait for the server to accept it."""
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(host=host, target=target, subprotocols=[SPICE_SUBPROTOCOL])
    await transport.send_all(ws.send(request))
    seen = 0
    while True:
        data = await transport.receive_some(4096)
        if not data:
            raise WebSocketError("server closed during the HTTP upgrade")
        seen += len(data)
        if seen > MAX_UPGRADE_REQUEST:
            raise WebSocketError("HTTP upgrade response too long")
        try:
            ws.receive_data(bytes(data))
        except (RemoteProtocolError, ValueError) as e:
            # wsproto decodes some headers as ASCII itself: UnicodeDecodeError is bad input
            raise WebSocketError(f"bad HTTP upgrade response: {e}") from None
        # lazily: listing every event would also take those of the frames that came with
        # the response, which the stream's _handle_events must get
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                stream = WebSocketStream(transport, ws)
                await stream._handle_events()
                return stream
            if isinstance(event, RejectConnection):
                raise WebSocketError(f"server refused the upgrade: HTTP {event.status_code}")
