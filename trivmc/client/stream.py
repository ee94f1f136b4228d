"""A client VMC channel (usbredir, port or webdav) as a trio HalfCloseableStream."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from .._streams import ConflictDetector, check_max_bytes
from ..protocol import (
    MsgcVmc,
    MsgVmc,
    PortEvent,
    PortEventMsg,
    PortInit,
    ProtocolError,
    decompress_body,
    vmc_payload,
)
from .connection import MessageConnection

log = logging.getLogger(__name__)

SEND_CHUNK = 64 * 1024
RECEIVE_QUEUE = 32  # messages buffered before the reader stops reading the socket
MAX_DECOMPRESSED = 16 * 1024 * 1024


class ChannelStream(trio.abc.HalfCloseableStream):
    """One linked VMC channel. `send_all` frames data as DATA (or COMPRESSED_DATA when
    the server advertised LZ4 and it helps); `receive_some` returns device bytes in
    order, b"" once the server closed the channel, and raises `trio.BrokenResourceError`
    when the connection was lost. SPICE has no half-close on the wire: `send_eof` only
    forbids further sends. Ports also expose `opened`, `port_name`, `next_event()` and
    `send_break()`.

    It keeps trio's stream contract (checked by `trio.testing.check_two_way_stream`):
    two tasks sending (send_all, send_eof, wait_send_all_might_not_block) or two
    receiving at once get `trio.BusyResourceError`; `receive_some(0)` is a ValueError;
    every call is a checkpoint; after `aclose` every call raises
    `trio.ClosedResourceError`, a receive blocked meanwhile included."""

    def __init__(
        self,
        conn: MessageConnection,
        channel_type: int,
        channel_id: int,
        *,
        lz4_out: bool,
        is_unix: bool,
        on_close: Callable[[ChannelStream], None],
    ) -> None:
        self.conn = conn
        self.channel_type = channel_type
        self.channel_id = channel_id
        self.lz4_out = lz4_out
        self.is_unix = is_unix
        self._on_close = on_close
        self._data_send, self._data_recv = trio.open_memory_channel[bytes](RECEIVE_QUEUE)
        self._events_send, self._events_recv = trio.open_memory_channel[int](math.inf)
        self._leftover = memoryview(b"")
        self._port_init = trio.Event()
        self._lost: str | None = None
        self._eof_sent = False
        self._closed = False
        self._sending = ConflictDetector("another task is sending on this channel")
        self._receiving = ConflictDetector("another task is receiving on this channel")
        self.port_name: str | None = None
        self.opened: bool | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # ---- the reader task -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                msg = await self.conn.receive()
                if msg is None:
                    break
                if msg.type == MsgVmc.DATA:
                    self.bytes_in += len(msg.body)
                    await self._data_send.send(bytes(msg.body))
                elif msg.type == MsgVmc.COMPRESSED_DATA:
                    data = decompress_body(msg.body, MAX_DECOMPRESSED)
                    self.bytes_in += len(data)
                    await self._data_send.send(data)
                    del data
                elif msg.type == MsgVmc.PORT_INIT:
                    init = PortInit.decode(msg.body)
                    self.port_name = init.name.decode(errors="replace")
                    self.opened = init.opened
                    self._port_init.set()
                elif msg.type == MsgVmc.PORT_EVENT:
                    event = PortEventMsg.decode(msg.body).event
                    if event in (PortEvent.OPENED, PortEvent.CLOSED):
                        self.opened = event == PortEvent.OPENED
                    known = event in PortEvent._value2member_map_
                    self._events_send.send_nowait(PortEvent(event) if known else event)
                else:
                    log.debug(
                        "ignoring message %d on channel %d:%d",
                        msg.type,
                        self.channel_type,
                        self.channel_id,
                    )
                del msg  # its body (a view of a read) is not kept while waiting
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            if not self._closed:
                self._lost = f"connection to the server lost: {e}"
        except ProtocolError as e:
            self._lost = f"protocol error from the server: {e}"
            log.warning("channel %d:%d: %s", self.channel_type, self.channel_id, e)
        finally:
            self._port_init.set()
            self._data_send.close()
            self._events_send.close()

    def connection_lost(self, why: str) -> None:
        """End pending receives with `why` (the session's main channel went away)."""
        if self._lost is None and not self._closed:
            self._lost = why
        self._data_send.close()

    # ---- trio stream API -------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await self._send_all(data)

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("channel closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called")
        if self._lost is not None:
            raise trio.BrokenResourceError(self._lost)
        view = memoryview(data).cast("B")
        if not len(view):
            await trio.lowlevel.checkpoint()
            return
        parts: list[bytes] = []
        enc = self.conn.encoder
        for off in range(0, len(view), SEND_CHUNK):
            # the client-side ids of DATA and COMPRESSED_DATA equal the server-side ones
            mtype, body = vmc_payload(view[off : off + SEND_CHUNK], self.lz4_out, self.is_unix)
            parts.append(enc.encode(mtype, body))
        try:
            await self.conn.send_raw(b"".join(parts))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            if self._closed:  # by another task meanwhile
                raise trio.ClosedResourceError("channel closed") from e
            raise trio.BrokenResourceError(f"connection to the server lost: {e}") from e
        self.bytes_out += len(view)

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("channel closed")
            await self.conn.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Forbid further sends (SPICE cannot tell the server); a checkpoint."""
        with self._sending:
            if self._closed:
                raise trio.ClosedResourceError("channel closed")
            self._eof_sent = True
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_max_bytes(max_bytes)
        with self._receiving:
            return await self._receive_some(max_bytes)

    async def _receive_some(self, max_bytes: int | None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("channel closed")
        if not len(self._leftover):
            try:
                self._leftover = memoryview(await self._data_recv.receive())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                await trio.lowlevel.cancel_shielded_checkpoint()  # a schedule point too
                if self._closed:
                    raise trio.ClosedResourceError("channel closed") from None
                if self._lost is not None:
                    raise trio.BrokenResourceError(self._lost) from None
                return b""
        else:
            await trio.lowlevel.checkpoint()
        n = len(self._leftover) if max_bytes is None else max_bytes
        out = bytes(self._leftover[:n])
        rest = self._leftover[n:]
        self._leftover = rest if len(rest) else memoryview(b"")  # an empty view pins
        return out

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._on_close(self)
        self._data_recv.close()
        await trio.aclose_forcefully(self.conn.stream)

    # ---- ports -----------------------------------------------------------------

    async def wait_port_init(self) -> str:
        """The name PORT_INIT announced (port and webdav channels)."""
        await self._port_init.wait()
        if self.port_name is None:
            raise trio.BrokenResourceError(self._lost or "channel closed before PORT_INIT")
        return self.port_name

    async def next_event(self) -> int:
        """The next PORT_EVENT from the server: a PortEvent (OPENED, CLOSED, BREAK), or
        the byte of an event of the application's own."""
        try:
            return await self._events_recv.receive()
        except trio.EndOfChannel:
            raise trio.BrokenResourceError(self._lost or "channel closed") from None

    async def send_break(self) -> None:
        """Send a PORT_EVENT BREAK to the device."""
        await self.conn.send(MsgcVmc.PORT_EVENT, PortEventMsg(PortEvent.BREAK).encode())
