"""ChannelClient: one linked channel connection (spice-server's RedChannelClient).

A thin trio driver around the sans-IO `ChannelConnection` (protocol/channel.py: the
ACK window, pings, the common message rules) and a `Sender` (server/sender.py: the
ordered, bounded outgoing queue and its task). Each runs a reader task, the sender task
and, when enabled, a ping task in its own nursery. `queued_bytes` counts bytes queued
and not yet written (the char device pauses reading at 1 MiB). `bytes_in` /
`bytes_out` count SPICE wire bytes (headers included; TLS and WebSocket framing not),
`messages_in` / `messages_out` whole messages; `Traffic` sums them over a channel's
connections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

import trio
from trio_util import RepeatedEvent

from .._groups import single_leaf
from ..protocol import Message, ProtocolError
from ..protocol.channel import (
    ChannelConnection,
    MigrateFlushMark,
    PeerDisconnecting,
    Role,
    UnknownMessage,
    WindowOpened,
)
from ..protocol.messages import Body
from ..transport.plainsocket import stream_io
from .sender import Sender

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
RECEIVE_SIZE_LARGE = 1024 * 1024  # after a read whose messages averaged LARGE_MESSAGE
LARGE_MESSAGE = 4 * 1024

__all__ = [
    "ChannelClient",
    "ChannelOptions",
    "PeerNotReading",
    "PeerUnresponsive",
    "Traffic",
    "UnknownMessage",
]


class PeerNotReading(ProtocolError):
    """The peer let its outgoing queue pass the channel's bound: it is disconnected."""


class PeerUnresponsive(ProtocolError):
    """The peer answered none of the last `ping_misses` PINGs: it is disconnected."""


@dataclass
class Traffic:
    """Wire bytes and messages of a channel's connections, both ways: `add` those of
    a connection that ended; `with_live` gives the totals with live ones included.
    Moving a connection from live to `add` in one step keeps every sum monotonic."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0

    def add(self, client: ChannelClient) -> None:
        self.bytes_in += client.bytes_in
        self.bytes_out += client.bytes_out
        self.messages_in += client.messages_in
        self.messages_out += client.messages_out

    def with_live(self, clients: Iterable[ChannelClient]) -> Traffic:
        total = replace(self)
        for client in clients:
            total.add(client)
        return total


MAX_QUEUED = 2 * 1024 * 1024
PING_MISSES = 3


@dataclass(frozen=True)
class ChannelOptions:
    """How one channel connection is framed and bounded.

    `max_queued`: bytes queued for the peer beyond which it is disconnected (a peer
    that does not read); `ping_interval` / `ping_misses`: PING every interval,
    disconnect after that many PINGs in a row went unanswered."""

    name: str
    mini_header: bool
    max_message: int
    is_unix: bool
    ack_window: int | None = None
    ping_interval: float | None = None
    max_queued: int = MAX_QUEUED
    ping_misses: int = PING_MISSES


class ChannelClient:
    """The trio side of one channel client: reads, the sender, pings.

    Guarantees: messages are written in the order sent; `run()` returns when the peer
    closes, and raises `ProtocolError` (after logging nothing itself) on bad input, on
    a queue above `ChannelOptions.max_queued` bytes (`PeerNotReading`) and on
    unanswered PINGs (`PeerUnresponsive`); the queue is dropped and the socket never
    written again once `run()` ends.

    The writer is chosen when the client is built: on a plain socket without an ACK
    window, `send` writes at once in the caller when nothing is queued (the fast path,
    transport/plainsocket.py); otherwise messages wait for the sender task.
    """

    def __init__(self, stream: trio.abc.Stream, opts: ChannelOptions) -> None:
        self.stream = stream
        self.opts = opts
        self.name = opts.name
        self.is_unix = opts.is_unix
        self.conn = ChannelConnection(
            Role.SERVER,
            mini_header=opts.mini_header,
            max_message=opts.max_message,
            ack_window=opts.ack_window,
            name=opts.name,
        )
        self.decoder = self.conn.decoder
        self._header = self.conn.encoder.header
        self.io = stream_io(stream)
        self.sender = Sender(self.io, direct=opts.ack_window is None)
        self._acked = RepeatedEvent()
        self.ping_interval = None if opts.is_unix else opts.ping_interval
        self.bytes_in = 0
        self.messages_in = 0  # counted per read
        self._failure: ProtocolError | None = None  # why the connection must end
        self._scope: trio.CancelScope | None = None  # run()'s, while it runs
        self._closed_early = False  # disconnect() before run()
        self.conn.start()  # SET_ACK (under a window) goes ahead of everything
        self._flush_connection()

    # ---- counters --------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for the client and not yet written."""
        return self.sender.queued_bytes

    @property
    def bytes_out(self) -> int:
        """Bytes written to the client so far."""
        return self.sender.bytes_out

    @property
    def messages_out(self) -> int:
        """Messages written to the client so far."""
        return self.sender.messages_out

    @property
    def unacked(self) -> int:
        """Messages sent and not yet acknowledged (the ACK window's count)."""
        return self.conn.unacked

    @property
    def pings_unanswered(self) -> int:
        """PINGs sent without their PONG yet."""
        return self.conn.pings_unanswered

    @property
    def min_rtt(self) -> float | None:
        """The lowest PING round trip seen, in seconds; None before the first PONG."""
        return self.conn.min_rtt

    # ---- sending ---------------------------------------------------------------

    def send(self, mtype: int, body: Body = b"") -> None:
        """Send one message, in order, without blocking (see the class docstring)."""
        size = len(body)
        sender = self.sender
        if sender.queued_bytes + size > self.opts.max_queued:
            self._fail(
                PeerNotReading(
                    f"{self.name}: the peer is not reading: {sender.queued_bytes + size}"
                    f" bytes would be queued for it, bound {self.opts.max_queued}"
                )
            )
            return
        header = self._header(mtype, size)
        sender.push((header, body) if size else (header,), len(header) + size)

    def send_large(self, mtype: int, body: Body) -> None:
        """`send` without the `ChannelOptions.max_queued` bound, for a message whose
        size its maker bounds (MIGRATE_DATA: a device's byte budget plus one message,
        above it)."""
        header = self._header(mtype, len(body))
        self.sender.push((header, body) if body else (header,), len(header) + len(body))

    def migrate(self, flags: int) -> None:
        """Send MIGRATE(`flags`) (a migration source); with NEED_FLUSH the client's
        flush mark then reaches `on_migrate_flush_mark`. RuntimeError during one."""
        self.conn.migrate(flags)
        self._flush_connection()

    def _flush_connection(self) -> None:
        """Send what the protocol connection decided to send (SET_ACK, PING)."""
        data = self.conn.data_to_send()
        if data:
            self.sender.push((data,), len(data))

    def _fail(self, why: ProtocolError) -> None:
        """End the connection from anywhere (never raises into the caller, which may be
        a device or backend task): nothing more is written, `run()` raises `why`."""
        if self._failure is None:
            self._failure = why
        self.sender.direct = False  # what is queued is dropped when run() ends
        if self._scope is not None:
            self._scope.cancel()

    def disconnect(self) -> None:
        """End the connection from the server's side: `run()` returns."""
        self.sender.direct = False  # the socket may close before run() ends
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._closed_early = True

    async def wait_queued_below(self, limit: int) -> None:
        """Return once fewer than `limit` bytes are queued for the client."""
        await self.sender.wait_queued_below(limit)

    async def _window(self) -> None:
        """The sender's gate under an ACK window: wait for room, count the message."""
        while not self.conn.may_send:
            await self._acked.wait()
        self.conn.message_sent()

    # ---- receiving -------------------------------------------------------------

    async def handle_message(self, mtype: int, body: Body) -> None:
        """Channel-specific messages; the base refuses any it does not know."""
        raise UnknownMessage(f"{self.name}: unknown message type {mtype}")

    def handle_now(self, mtype: int, body: Body) -> bool:
        """Hook: handle a message synchronously when that is possible (the hot path);
        False sends it through `handle_message`. The base handles nothing here."""
        return False

    async def _dispatch(self, msg: Message) -> None:
        event = self.conn.handle(msg)
        if event is None:
            return
        if isinstance(event, Message):
            await self.handle_message(event.type, event.body)
        elif isinstance(event, WindowOpened):
            self._acked.set()
        elif isinstance(event, PeerDisconnecting):
            log.debug("%s: client says it is disconnecting", self.name)
        elif isinstance(event, MigrateFlushMark):
            await self.on_migrate_flush_mark()
        else:
            await self.on_migrate_data(event.body)

    async def on_migrate_flush_mark(self) -> None:
        """Hook: the client's flush mark after `migrate()`: everything it sent before
        was handled (the reader handles messages in order)."""

    async def on_migrate_data(self, body: Body) -> None:
        """Hook: a migration target's MIGRATE_DATA (after `conn.expect_migrate_data()`);
        raise ProtocolError when it is bad."""

    async def _reader(self, initial: bytes) -> None:
        feed = self.decoder.feed
        handle_now = self.handle_now
        dispatch = self._dispatch
        receive = self.io.receive
        cork, uncork = self.sender.cork, self.sender.uncork
        data: bytes | bytearray | memoryview = initial
        size = RECEIVE_SIZE
        while True:
            if data:
                self.bytes_in += len(data)
                messages = feed(data)
                self.messages_in += len(messages)
                # what the messages of one read make the server send goes out in one
                # write (echoes, replies); nothing stays held across an await
                cork()
                for msg in messages:
                    if not handle_now(msg.type, msg.body):
                        uncork()
                        await dispatch(msg)
                        cork()
                uncork()
                # big messages: big reads (fewer reads and split bodies); small ones:
                # reads that do not make tens of thousands of message objects at once
                big = len(data) >= LARGE_MESSAGE * (len(messages) + 1)
                size = RECEIVE_SIZE_LARGE if big else RECEIVE_SIZE
                if messages:
                    del msg
                del messages
            # nothing of the last read stays alive while this task waits (with a
            # thousand idle sessions, a last chunk each adds up to hundreds of MiB)
            data = b""
            data = await receive(size)
            if not data:
                if self.decoder.pending:
                    log.info("%s: peer closed in the middle of a message", self.name)
                return

    # ---- pings -----------------------------------------------------------------

    def ping(self) -> None:
        """Send a PING; its PONG (even a late one) updates `min_rtt` and shows the
        peer is alive."""
        self.conn.ping()
        self._flush_connection()

    async def _pinger(self) -> None:
        assert self.ping_interval is not None
        while True:
            await trio.sleep(self.ping_interval)
            if self.conn.pings_unanswered >= self.opts.ping_misses:
                self._fail(
                    PeerUnresponsive(
                        f"{self.name}: no PONG for the last {self.conn.pings_unanswered}"
                        f" PINGs ({self.ping_interval:g} s apart): disconnected"
                    )
                )
                return
            self.ping()

    # ---- lifetime --------------------------------------------------------------

    async def on_start(self) -> None:
        """Hook: queue what the channel sends first."""

    async def run(self, initial: bytes = b"") -> None:
        """Serve this channel client until the peer closes or misbehaves."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._failure is not None or self._closed_early:
                    nursery.cancel_scope.cancel()
                gate = self._window if self.opts.ack_window is not None else None
                nursery.start_soon(self.sender.run, gate)
                if self.ping_interval:
                    nursery.start_soon(self._pinger)
                await self.on_start()
                await self._reader(initial)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the one protocol error, as documented
            leaf = single_leaf(group)
            if isinstance(leaf, ProtocolError):
                raise leaf from None
            raise
        finally:
            self._scope = None
            self.sender.close()  # the socket is closed after this: never write to it
        if self._failure is not None:
            raise self._failure
