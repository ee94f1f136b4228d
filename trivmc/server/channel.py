"""ChannelClient: one linked channel connection (spice-server's RedChannelClient).

Each runs a reader task, a sender task and, when enabled, a ping task in its own
nursery. Outgoing messages wait in a memory channel; the sender batches whatever is
queued into one socket write. `queued_bytes` counts body bytes queued and not yet
written (the char device pauses reading at 1 MiB). `bytes_in` / `bytes_out` count SPICE
wire bytes (headers included; TLS and WebSocket framing not), `messages_in` /
`messages_out` whole messages; `Traffic` sums them over a channel's connections.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import trio

from ..protocol import (
    AckSync,
    Message,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgCommon,
    Ping,
    Pong,
    ProtocolError,
    SetAck,
)
from ..protocol.messages import Body

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
RECEIVE_SIZE_LARGE = 1024 * 1024  # after a read whose messages averaged LARGE_MESSAGE
LARGE_MESSAGE = 4 * 1024
BATCH_BYTES = 256 * 1024
GATHER_MAX_MESSAGES = 64  # more (small) messages are joined: IOV_MAX is 1024
FRAMED = -1  # a queued item already framed: the rest of a message written in part


async def send_gathered(sock: trio.socket.SocketType, parts: list[Body]) -> int:
    """Send every byte of `parts` with writev (scatter-gather) on the socket's fd, in
    order; return the byte count. Partial sends resume where the kernel stopped, after
    waiting for the socket to be writable; one scheduling point per call, as trio's
    own sendmsg has."""
    total = 0
    await trio.lowlevel.checkpoint()
    while parts:
        try:
            n = os.writev(sock.fileno(), parts)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as e:
            raise trio.BrokenResourceError(f"socket write failed: {e}") from e
        total += n
        while n:
            size = len(parts[0])
            if n >= size:
                n -= size
                parts.pop(0)
            else:
                parts[0] = memoryview(parts[0])[n:]
                n = 0
    return total


class UnknownMessage(ProtocolError):
    """A message type this channel does not handle (spice-server closes the channel)."""


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
OUTSTANDING_PINGS = 8  # PINGs remembered for matching late PONGs


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
    """The transport side of one channel client: framing, queues, ack window, pings.

    Guarantees: messages are written in the order queued; `run()` returns when the peer
    closes, and raises `ProtocolError` (after logging nothing itself) on bad input, on
    a queue above `max_queued` bytes (`PeerNotReading`) and on unanswered PINGs
    (`PeerUnresponsive`); the queue is dropped when `run()` ends.
    """

    def __init__(self, stream: trio.abc.Stream, opts: ChannelOptions) -> None:
        self.stream = stream
        self.opts = opts
        self.name = opts.name
        self.is_unix = opts.is_unix
        self.encoder = MessageEncoder(opts.mini_header)
        self.decoder = MessageDecoder(opts.mini_header, opts.max_message)
        self.queued_bytes = 0
        self._queue_changed = trio.Event()
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[int, Body]](math.inf)
        self.ack_window = opts.ack_window
        self.ack_generation = 0
        self.client_generation = 0xFFFFFFFF
        self.unacked = 0
        self._acked = trio.Event()
        self.ping_interval = None if opts.is_unix else opts.ping_interval
        self._ping_id = 0
        self._ping_sent: dict[int, int] = {}  # id -> timestamp, oldest first
        self.pings_unanswered = 0  # PINGs sent since the last PONG that matched one
        self.min_rtt: float | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0  # counted per read
        self.messages_out = 0  # counted once wholly written
        # plain sockets take scatter-gather writes; TLS and WebSocket streams do not
        self._gather_socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        # messages written at once when nothing is queued (not under an ACK window)
        sock = self._gather_socket
        self._direct_fd = sock.fileno() if sock is not None and self.ack_window is None else None
        self._queued_items = 0  # queued or being written by the sender
        self._failure: ProtocolError | None = None  # why the connection must end
        self._scope: trio.CancelScope | None = None  # run()'s, while it runs
        self._closed_early = False  # disconnect() before run()

    # ---- sending ---------------------------------------------------------------

    def send(self, mtype: int, body: Body = b"") -> None:
        """Send one message, in order, without blocking: on a plain socket with nothing
        queued or being written it is written at once (as spice-server does, with no
        task switch); whatever the kernel does not take now is queued for the sender."""
        if self._direct_fd is not None and not self._queued_items:
            header = self.encoder.header(mtype, len(body))
            try:
                n = os.writev(self._direct_fd, (header, body) if len(body) else (header,))
            except OSError:  # full (BlockingIOError) or broken: the sender deals with it
                n = 0
            self.bytes_out += n
            if n == len(header) + len(body):
                self.messages_out += 1
                return
            if n >= len(header):  # the rest of the body, as it is (bodies are immutable)
                mtype, body = FRAMED, memoryview(body)[n - len(header) :]
            else:
                mtype, body = FRAMED, header[n:] + bytes(body)
        if self.queued_bytes + len(body) > self.opts.max_queued:
            self._fail(
                PeerNotReading(
                    f"{self.name}: the peer is not reading: {self.queued_bytes + len(body)}"
                    f" bytes would be queued for it, bound {self.opts.max_queued}"
                )
            )
            return
        self.queued_bytes += len(body)
        self._queued_items += 1
        self._out_send.send_nowait((mtype, body))

    def _fail(self, why: ProtocolError) -> None:
        """End the connection from anywhere (never raises into the caller, which may be
        a device or backend task): nothing more is written, `run()` raises `why`."""
        if self._failure is None:
            self._failure = why
            self._direct_fd = None
        if self._scope is not None:
            self._scope.cancel()

    def disconnect(self) -> None:
        """End the connection from the server's side: `run()` returns."""
        self._direct_fd = None
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._closed_early = True

    async def wait_queued_below(self, limit: int) -> None:
        while self.queued_bytes >= limit:
            await self._queue_changed.wait()

    def _batch(self, first: tuple[int, Body]) -> list[tuple[int, Body]]:
        batch = [first]
        size = len(first[1])
        while size < BATCH_BYTES:
            try:
                item = self._out_recv.receive_nowait()
            except trio.WouldBlock:
                break
            batch.append(item)
            size += len(item[1])
        return batch

    async def _sender(self) -> None:
        if self.ack_window is not None:
            # SET_ACK goes first, ahead of anything queued; it counts as a sent message
            self.ack_generation += 1
            self.unacked = 1
            body = SetAck(self.ack_generation, self.ack_window).encode()
            data = self.encoder.encode(MsgCommon.SET_ACK, body)
            await self.stream.send_all(data)
            self.bytes_out += len(data)
            self.messages_out += 1
        async for first in self._out_recv:
            batch = self._batch(first)
            del first
            if self.ack_window is not None:
                await self._send_windowed(batch)
            else:
                await self._write(batch)
            del batch  # sent: not kept alive while waiting for the next

    async def _send_windowed(self, batch: Iterable[tuple[int, Body]]) -> None:
        assert self.ack_window is not None
        for item in batch:
            while self.unacked > 2 * self.ack_window:
                await self._acked.wait()
            self.unacked += 1
            await self._write([item])

    async def _write(self, batch: list[tuple[int, Body]]) -> None:
        header = self.encoder.header
        parts: list[Body] = []  # header, body, header, body...: the bodies not copied
        for mtype, body in batch:
            if mtype != FRAMED:
                parts.append(header(mtype, len(body)))
            if len(body):
                parts.append(body)
        sock = self._gather_socket
        if sock is not None and len(batch) <= GATHER_MAX_MESSAGES:
            self.bytes_out += await send_gathered(sock, parts)
        else:
            data = b"".join(parts)
            await self.stream.send_all(data)
            self.bytes_out += len(data)
        self.messages_out += len(batch)  # a FRAMED item ends the message it continues
        self._queued_items -= len(batch)
        self.queued_bytes -= sum(len(b) for _, b in batch)
        self._queue_changed.set()
        self._queue_changed = trio.Event()

    # ---- receiving -------------------------------------------------------------

    async def handle_message(self, mtype: int, body: Body) -> None:
        """Channel-specific messages; the base refuses any it does not know."""
        raise UnknownMessage(f"{self.name}: unknown message type {mtype}")

    async def _dispatch(self, msg: Message) -> None:
        mtype, body = msg.type, msg.body
        if mtype > MsgcCommon.DISCONNECTING:
            await self.handle_message(mtype, body)
        elif mtype == MsgcCommon.PONG:
            self._on_pong(Pong.decode(body))
        elif mtype == MsgcCommon.ACK_SYNC:
            self.client_generation = AckSync.decode(body).generation
        elif mtype == MsgcCommon.ACK:
            if self.ack_window is not None and self.client_generation == self.ack_generation:
                self.unacked -= self.ack_window
                self._acked.set()
                self._acked = trio.Event()
        elif mtype == MsgcCommon.DISCONNECTING:
            log.debug("%s: client says it is disconnecting", self.name)
        elif mtype in (MsgcCommon.MIGRATE_FLUSH_MARK, MsgcCommon.MIGRATE_DATA):
            raise ProtocolError(f"{self.name}: migration message {mtype} without migration")
        else:
            raise UnknownMessage(f"{self.name}: unknown message type {mtype}")

    def handle_now(self, mtype: int, body: Body) -> bool:
        """Hook: handle a message synchronously when that is possible (the hot path);
        False sends it through `handle_message`. The base handles nothing here."""
        return False

    async def _reader(self, initial: bytes) -> None:
        feed = self.decoder.feed
        handle_now = self.handle_now
        dispatch = self._dispatch
        receive = self._receive_plain if self._gather_socket is not None else self._receive
        data: bytes | bytearray = initial
        size = RECEIVE_SIZE
        while True:
            if data:
                self.bytes_in += len(data)
                messages = feed(data)
                self.messages_in += len(messages)
                for msg in messages:
                    if not handle_now(msg.type, msg.body):
                        await dispatch(msg)
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

    async def _receive(self, size: int) -> bytes | bytearray:
        return await self.stream.receive_some(size)

    async def _receive_plain(self, size: int) -> bytes:
        """`receive_some` of a plain socket with the layers it does not need taken off:
        one read of the fd, one scheduling point (as trio's own has), and a wait for
        readability only when there is nothing to read."""
        sock = self._gather_socket
        assert sock is not None
        await trio.lowlevel.checkpoint()
        while True:
            try:
                return os.read(sock.fileno(), size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except OSError as e:
                raise trio.BrokenResourceError(f"socket read failed: {e}") from e

    # ---- pings -----------------------------------------------------------------

    def _on_pong(self, pong: Pong) -> None:
        sent = self._ping_sent.get(pong.id)
        if sent is None or sent != pong.timestamp:
            return  # not ours: ignore
        for pid in list(self._ping_sent):  # this PING and the ones before it are done
            del self._ping_sent[pid]
            if pid == pong.id:
                break
        self.pings_unanswered = 0
        rtt = (time.monotonic_ns() - sent) / 1e9
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt

    def ping(self) -> None:
        """Queue a PING; its PONG (even a late one) updates `min_rtt` and shows the
        peer is alive."""
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        ts = time.monotonic_ns()
        self._ping_sent[self._ping_id] = ts
        while len(self._ping_sent) > OUTSTANDING_PINGS:
            del self._ping_sent[next(iter(self._ping_sent))]
        self.pings_unanswered += 1
        self.send(MsgCommon.PING, Ping(self._ping_id, ts).encode())

    async def _pinger(self) -> None:
        assert self.ping_interval is not None
        while True:
            await trio.sleep(self.ping_interval)
            if self.pings_unanswered >= self.opts.ping_misses:
                self._fail(
                    PeerUnresponsive(
                        f"{self.name}: no PONG for the last {self.pings_unanswered} PINGs"
                        f" ({self.ping_interval:g} s apart): disconnected"
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
                nursery.start_soon(self._sender)
                if self.ping_interval:
                    nursery.start_soon(self._pinger)
                await self.on_start()
                await self._reader(initial)
                nursery.cancel_scope.cancel()
        finally:
            self._scope = None
            self._direct_fd = None  # the socket is closed after this: never write to it
            self._drop_queue()
        if self._failure is not None:
            raise self._failure

    def _drop_queue(self) -> None:
        while True:
            try:
                self._out_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self.queued_bytes = 0
        self._queued_items = 0
        self._queue_changed.set()
