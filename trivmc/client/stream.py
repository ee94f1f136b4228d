"""A client VMC channel (usbredir, port or webdav) as a trio HalfCloseableStream."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from .._streams import ConflictDetector, check_max_bytes
from ..protocol import (
    Message,
    Migrate,
    MigrateFlags,
    MsgcCommon,
    MsgCommon,
    MsgcVmc,
    MsgVmc,
    PortEvent,
    PortEventMsg,
    PortInit,
    ProtocolError,
    decompress_body,
    vmc_payload,
)
from ..protocol.message_base import Body
from .connection import MessageConnection

log = logging.getLogger(__name__)

_SWITCHED: Message = Message(-1, b"")  # the reader's connection was swapped
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
    `trio.ClosedResourceError`, a receive blocked meanwhile included.

    When the session follows a migration (docs/migration.md), the stream stays the same
    object: its connection (`conn`) is swapped for the destination's. Sends are held
    during the switch and then go to the destination; receives go on with the
    destination's bytes."""

    def __init__(
        self,
        conn: MessageConnection,
        channel_type: int,
        channel_id: int,
        *,
        lz4_out: bool,
        is_unix: bool,
        on_close: Callable[[ChannelStream], None],
        on_moved: Callable[[ChannelStream], None] | None = None,
    ) -> None:
        self.conn = conn
        self.channel_type = channel_type
        self.channel_id = channel_id
        self.lz4_out = lz4_out
        self.is_unix = is_unix
        self._on_close = on_close
        self._on_moved = on_moved
        # migration: sends wait while `_hold` is set; the reader reads `conn` inside
        # `_recv_scope` (cancelled when `conn` is swapped under it); `migration_target`
        # is the destination's connection for a seamless move (its MIGRATE swaps it in)
        self._hold: trio.Event | None = None
        self._recv_scope: trio.CancelScope | None = None
        self._conn_changed = trio.Event()
        self._expect_switch = False
        self.migration_target: tuple[MessageConnection, bool] | None = None
        self.moves = 0
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
        """The channel's reader task: started by `Session.open_channel` in the session's
        nursery (the one `connect` opens), it ends when the connection closes or breaks."""
        task_status.started()
        try:
            while True:
                msg = await self._next_message()
                if msg is None:
                    break
                if msg is _SWITCHED:
                    continue
                await self._handle(msg)
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

    async def _handle(self, msg: Message) -> None:
        """One message of the current connection: device bytes to the receive queue,
        port state, a MIGRATE (the seamless switch)."""
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
        elif msg.type == MsgCommon.MIGRATE:
            await self._migrate(Migrate.decode(msg.body))
        else:
            log.debug(
                "ignoring message %d on channel %d:%d",
                msg.type,
                self.channel_type,
                self.channel_id,
            )

    async def _next_message(self) -> Message | None:
        """The next message of the current connection; `_SWITCHED` when the connection
        was swapped meanwhile; None at the end. The end of a connection the session is
        about to replace (a move under way) waits for the replacement instead."""
        while True:
            conn = self.conn
            with trio.CancelScope() as scope:
                self._recv_scope = scope
                try:
                    msg = await conn.receive()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    if conn is self.conn and not self._expect_switch:
                        raise
                    msg = None  # the old connection, closed by the switch (or about to be)
                finally:
                    self._recv_scope = None
            if scope.cancelled_caught or conn is not self.conn:
                return _SWITCHED
            if msg is not None or not self._expect_switch or self._lost is not None:
                return msg
            log.info("channel %d:%d: source closed, waiting for the move", *self._ids)
            await self._conn_changed.wait()

    @property
    def _ids(self) -> tuple[int, int]:
        return self.channel_type, self.channel_id

    def connection_lost(self, why: str) -> None:
        """End pending receives with `why` (the session's main channel went away)."""
        if self._lost is None and not self._closed:
            self._lost = why
        self._data_send.close()
        self._expect_switch = False
        self._release()

    # ---- migration -------------------------------------------------------------

    async def hold_sends(self, expect_switch: bool = True) -> None:
        """Hold every later send until `switch_to` (or `connection_lost`); returns once
        the sends already under way went out. With `expect_switch`, the current
        connection ending is not the channel's end: the reader waits for the switch."""
        if self._hold is None:
            self._hold = trio.Event()
        self._expect_switch = expect_switch
        async with self.conn.send_lock:  # FIFO: the sends queued before this are done
            pass

    def _release(self) -> None:
        if self._hold is not None:
            self._hold.set()
            self._hold = None
        self._conn_changed.set()
        self._conn_changed = trio.Event()

    async def switch_to(self, conn: MessageConnection, lz4_out: bool) -> None:
        """Make `conn` (linked to the destination) this channel's connection: the held
        sends go there, the reader goes on there; the old connection is closed."""
        old = self.conn
        self.conn = conn
        self.lz4_out = lz4_out
        self.migration_target = None
        self._expect_switch = False
        if self._recv_scope is not None:
            self._recv_scope.cancel()  # the reader was waiting on the old connection
        self._release()
        self.moves += 1
        if old is not conn:
            await trio.aclose_forcefully(old.stream)
        if self._on_moved is not None:
            self._on_moved(self)

    async def _migrate(self, mig: Migrate) -> None:
        """SPICE_MSG_MIGRATE on this channel (a seamless move): flush mark, the source's
        MIGRATE_DATA, then the destination connection with that data first."""
        target = self.migration_target
        source = self.conn
        if mig.flags & MigrateFlags.NEED_FLUSH:
            await self.hold_sends()
            await source.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        data: Message | None = None
        while mig.flags & MigrateFlags.NEED_DATA_TRANSFER:
            # spice-server keeps sending what its device read after MIGRATE, until the
            # flush mark reached it: that is the source's data, delivered in order
            data = await source.receive()
            if data is None:
                raise ProtocolError(f"channel {self._ids}: MIGRATE not followed by MIGRATE_DATA")
            if data.type == MsgCommon.MIGRATE_DATA:
                break
            if data.type == MsgCommon.MIGRATE:
                raise ProtocolError(f"channel {self._ids}: MIGRATE during a MIGRATE")
            await self._handle(data)
        if target is None:
            log.warning("channel %d:%d: MIGRATE without a destination", *self._ids)
            raise trio.BrokenResourceError("the server moved a channel with no destination")
        conn, lz4_out = target
        if data is not None:
            await conn.send(MsgcCommon.MIGRATE_DATA, bytes(data.body))
        await self.switch_to(conn, lz4_out)

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
        parts: list[tuple[int, Body]] = []
        for off in range(0, len(view), SEND_CHUNK):
            # the client-side ids of DATA and COMPRESSED_DATA equal the server-side ones
            parts.append(vmc_payload(view[off : off + SEND_CHUNK], self.lz4_out, self.is_unix))
        try:
            await self._send_messages(parts)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            if self._closed:  # by another task meanwhile
                raise trio.ClosedResourceError("channel closed") from e
            raise trio.BrokenResourceError(f"connection to the server lost: {e}") from e
        self.bytes_out += len(view)

    async def _send_messages(self, messages: list[tuple[int, Body]]) -> None:
        """Frame and send on the current connection, once no move holds sends. Nothing
        awaits between the last check and `send_raw` taking its lock: `hold_sends`
        relies on the lock's order."""
        while self._hold is not None:
            await self._hold.wait()
            if self._lost is not None:
                raise trio.BrokenResourceError(self._lost)
        enc = self.conn.encoder  # the connection's own framing
        await self.conn.send_raw(enc.encode_many(messages))

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
        self._expect_switch = False
        self._release()  # a send held by a move, or a reader waiting for one, ends
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
        await self._send_messages([(MsgcVmc.PORT_EVENT, PortEventMsg(PortEvent.BREAK).encode())])
