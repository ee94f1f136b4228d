"""CharDevice: spice-server's RedCharDevice on trio.

Client -> device: `await get_write_buffer(data)` takes a self token (128 for a VMC
device) and waits while the bytes buffered for the device reach its byte budget (both
stop the caller reading its socket, so TCP pushes back on the client); then
`write_buffer_add(buf)` writes it at once when the device is idle (as spice-server
does) and queues what is left on a memory channel; the writer task writes queued
buffers in order, keeping the unwritten rest of a partial write, and retries when the
instance signals `wakeup_writable()` or after `RETRY_INTERVAL`. Bound: at most
`byte_budget` bytes plus one buffer are ever held (`buffered_bytes`).

Device -> client: `wakeup()` makes the reader task read chunks of at most `max_read`
bytes while a client is attached and the device runs, until the instance has nothing;
it pauses while the client has `client_queue_limit` bytes or more queued.

Ownership: a WriteBuffer belongs to its filler until `write_buffer_add`, then to the
queue, then to the writer; each owner releases it on every exit path (cancellation
included), and `release()` returns the token. Accepted buffers are the device's, not
the client's: removing a client never drops them; `reset()` does (the channel calls it
at a session boundary, once the drain deadline passed), and returns every
token.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from .buffer import WriteBuffer
from .interface import DeviceClient, DeviceInstance

log = logging.getLogger(__name__)

VMC_TOKENS = 128
BYTE_BUDGET = 4 * 1024 * 1024  # client -> device bytes held per device (docs/limits.md)
MAX_READ = 64 * 1024 + 32
CLIENT_QUEUE_LIMIT = 1024 * 1024
READ_BATCH = 256 * 1024  # bytes read for a client between two scheduling points
RETRY_INTERVAL = 0.1


@dataclass
class DeviceStats:
    """Byte counters of one device; they only grow.

    The first six are spice-server's spicevmc counters, with its meanings (spicevmc.cpp;
    the VMC channel client updates them, docs/chardev.md): a message's bytes count once
    the device accepted it, a device read's once it is queued for the client. The last
    three are the device's own: bytes through the instance, and dropped ones.
    """

    in_data: int = 0  # payload of DATA messages from clients
    in_compressed: int = 0  # LZ4 block bytes of COMPRESSED_DATA from clients
    in_decompressed: int = 0  # the bytes those decompressed to
    out_data: int = 0  # device bytes sent to clients as DATA
    out_compressed: int = 0  # LZ4 block bytes of COMPRESSED_DATA sent to clients
    out_uncompressed: int = 0  # device bytes sent to clients as COMPRESSED_DATA
    written: int = 0  # bytes written into the device instance
    read: int = 0  # bytes read from the device instance (for a client)
    dropped: int = 0  # client bytes never written: by reset() (a session boundary) or a stop


class _Flag:
    """A level-triggered wakeup: `set()` is never lost, `wait()` consumes it."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event = trio.Event()

    def set(self) -> None:
        self._set = True
        self._event.set()

    def clear(self) -> None:
        self._set = False
        if self._event.is_set():
            self._event = trio.Event()

    @property
    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        """Return once set (at once if set already), then clear it."""
        if not self._set:
            await self._event.wait()
        self.clear()


class CharDevice:
    """A char device with its write queue, self tokens, writer and reader tasks."""

    def __init__(
        self,
        instance: DeviceInstance,
        *,
        tokens: int = VMC_TOKENS,
        byte_budget: int = BYTE_BUDGET,
        max_read: int = MAX_READ,
        client_queue_limit: int = CLIENT_QUEUE_LIMIT,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.instance = instance
        self.total_tokens = tokens
        self.byte_budget = byte_budget
        self.buffered_bytes = 0  # accepted for the device and not yet written
        self.max_read = max_read
        self.client_queue_limit = client_queue_limit
        self.retry_interval = retry_interval
        self.stats = DeviceStats()
        self.outstanding_buffers = 0  # handed out and not yet released
        self.write_retries = 0  # writes retried after the timer or a wakeup
        self._tokens = trio.Semaphore(tokens)
        self._send, self._recv = trio.open_memory_channel[WriteBuffer](math.inf)
        self._queued = 0  # buffers added and not yet done with by the writer
        self._retry_first = False  # the queued head was partly written inline
        self._inline_reading = False
        self._writable = _Flag()
        self._room = _Flag()  # buffered_bytes went below the budget
        self._emptied = trio.Event()  # set when the write queue becomes empty
        self._readable = _Flag()
        self._running = True
        self._running_changed = trio.Event()
        self._client: DeviceClient | None = None
        self._reader_scope: trio.CancelScope | None = None
        self._reset_gen = 0

    # ---- accounting ------------------------------------------------------------

    @property
    def tokens_free(self) -> int:
        return self._tokens.value

    @property
    def queued_buffers(self) -> int:
        """Buffers in the write queue, the writer's current one included."""
        return self._queued

    @property
    def idle(self) -> bool:
        """True when every token is free and no buffer or byte is outstanding."""
        return (
            self.tokens_free == self.total_tokens
            and self.outstanding_buffers == 0
            and self.buffered_bytes == 0
        )

    # ---- client -> device ------------------------------------------------------

    def _release_token(self) -> None:
        self.outstanding_buffers -= 1
        self._tokens.release()

    @property
    def has_room(self) -> bool:
        """A token is free and the buffered bytes are under the budget."""
        return self._tokens.value > 0 and self.buffered_bytes < self.byte_budget

    @property
    def writes_now(self) -> bool:
        """`try_write` would take data now (the device runs with nothing queued and a
        token free): a caller may make the data (decompress it) just for that."""
        return not self._queued and self._running and self._tokens.value > 0

    async def get_write_buffer(
        self, data: bytes | bytearray | memoryview = b"", compressed: bool = False
    ) -> WriteBuffer:
        """Wait for a free token and for the buffered bytes to be under the budget,
        then wrap `data` (owned by the caller from now on; the caller may set
        `buf.data` later, before `write_buffer_add`, e.g. to decompress only once
        there is room). With room it returns without a task switch (the hot path)."""
        if self.has_room:
            self._tokens.acquire_nowait()
        else:
            await self._tokens.acquire()
            try:
                while self.buffered_bytes >= self.byte_budget:
                    await self._room.wait()
            except BaseException:
                self._tokens.release()
                raise
        self.outstanding_buffers += 1
        return WriteBuffer(data, self._release_token, compressed)

    @contextlib.asynccontextmanager
    async def write_buffer(
        self, data: bytes | bytearray | memoryview = b"", compressed: bool = False
    ) -> AsyncIterator[WriteBuffer]:
        """Take a token and a buffer for `data` (or for what the block puts in
        `buf.data`); queue it when the block ends normally,
        release it when the block raises (cancellation included)."""
        buf = await self.get_write_buffer(data, compressed)
        try:
            yield buf
        except BaseException:
            buf.release()
            raise
        if not buf.released:
            self.write_buffer_add(buf)

    def try_write(self, data: bytes | bytearray | memoryview) -> bool:
        """The hot path of `get_write_buffer` + `write_buffer_add`, without a task
        switch or a buffer object: when the device runs with nothing queued and a token
        free, write `data` now and return True; what the instance does not take is
        queued under a token, as `write_buffer_add` would. False: take the slow path."""
        if self._queued or not self._running or self._tokens.value == 0:
            return False
        self._writable.clear()
        n = self.instance.write(data if isinstance(data, memoryview) else memoryview(data))
        if n > 0:
            self.stats.written += n
        if n < len(data):
            self._tokens.acquire_nowait()  # free: checked above
            self.outstanding_buffers += 1
            buf = WriteBuffer(memoryview(data)[n:], self._release_token)
            self._retry_first = True  # the writer waits before it tries again
            self._enqueue(buf)
        return True

    def _enqueue(self, buf: WriteBuffer) -> None:
        self.buffered_bytes += len(buf.data)
        self._send.send_nowait(buf)
        self._queued += 1

    def _unbuffer(self, n: int) -> None:
        self.buffered_bytes -= n
        if self.buffered_bytes < self.byte_budget:
            self._room.set()

    def write_buffer_add(self, buf: WriteBuffer) -> None:
        """Hand `buf` to the device; the device owns it from now on (never blocks).

        When nothing is queued or being written and the device runs, it is written at
        once, as spice-server does; what the instance does not take (or all of it,
        otherwise) goes to the write queue for the writer task, in order."""
        if buf.released:
            raise ValueError("buffer already released")
        if self._queued == 0 and self._running:
            self._writable.clear()
            n = self.instance.write(memoryview(buf.data))
            if n > 0:
                self.stats.written += n
            if n >= len(buf.data):
                buf.release()
                return
            buf.data = memoryview(buf.data)[n:]
            self._retry_first = True  # the writer waits before it tries again
        self._enqueue(buf)

    def wakeup_writable(self) -> None:
        """The instance can take more data (NOTIFY_WRITABLE). Never lost."""
        self._writable.set()

    async def _wait_running(self) -> None:
        while not self._running:
            await self._running_changed.wait()

    async def _wait_writable(self) -> None:
        """After a partial write: wait for NOTIFY_WRITABLE or the retry timer."""
        with trio.move_on_after(self.retry_interval):
            await self._writable.wait()
        self.write_retries += 1

    async def _writer(self) -> None:
        while True:
            # drain what is queued without a task switch per buffer; wait when empty
            try:
                buf = self._recv.receive_nowait()
            except trio.WouldBlock:
                buf = await self._recv.receive()
            gen = self._reset_gen
            view = memoryview(buf.data) if not isinstance(buf.data, memoryview) else buf.data
            try:
                while len(view) and gen == self._reset_gen:
                    if not self._running:
                        await self._running_changed.wait()  # start() or reset()
                        continue
                    if self._retry_first:
                        self._retry_first = False
                        await self._wait_writable()
                        continue
                    self._writable.clear()
                    n = self.instance.write(view)
                    if n > 0:
                        self.stats.written += n
                        view = view[n:]
                        self._unbuffer(n)
                    if len(view) and gen == self._reset_gen:
                        await self._wait_writable()
            finally:
                self._queued -= 1
                if len(view) and gen == self._reset_gen:  # cancelled: reset() did not count it
                    self.stats.dropped += len(view)
                self._unbuffer(len(view))  # what is left unwritten (reset, cancelled)
                buf.release()
                del view, buf  # not kept alive while waiting for the next buffer
                if not self._queued:
                    self._emptied.set()

    # ---- device -> client ------------------------------------------------------

    def wakeup(self) -> None:
        """The instance may have data to read (spice_server_char_device_wakeup).

        Like spice-server, it reads at once, inside this call, when a client is attached,
        the device runs and the reader task is idle; the reader task takes over when the
        client's queue reaches its limit."""
        client = self._client
        idle = self._reader_scope is None and not self._inline_reading
        if client is not None and self._running and idle:
            self._inline_reading = True
            try:
                if not self._read_now(client):
                    return
            finally:
                self._inline_reading = False
        self._readable.set()

    def _read_now(self, client: DeviceClient) -> bool:
        """Read for `client` until the instance is empty (False) or the client's queue
        is at its limit (True: the reader task must wait and go on)."""
        while self._client is client:
            if client.queued_bytes >= self.client_queue_limit:
                return True
            data = self.instance.read(self.max_read)
            if not data:
                return False
            self.stats.read += len(data)
            client.push_device_data(data)
        return False

    async def _reader(self) -> None:
        while True:
            await self._readable.wait()
            client = self._client
            if client is None:
                continue
            with trio.CancelScope() as scope:
                self._reader_scope = scope
                await self._read_for(client)
            self._reader_scope = None

    async def _read_for(self, client: DeviceClient) -> None:
        since_checkpoint = 0
        while self._client is client:
            if not self._running:
                await self._wait_running()
                continue
            if client.queued_bytes >= self.client_queue_limit:
                await client.wait_queued_below(self.client_queue_limit)
                continue
            data = self.instance.read(self.max_read)
            if not data:
                return
            self.stats.read += len(data)
            client.push_device_data(data)
            since_checkpoint += len(data)
            if since_checkpoint >= READ_BATCH:  # let the sender and others run
                since_checkpoint = 0
                await trio.lowlevel.checkpoint()

    def attach_client(self, client: DeviceClient) -> None:
        """Attach the one client; the device state becomes connected and pending data
        is read for it."""
        if self._client is not None:
            raise RuntimeError("the device already has a client")
        self._client = client
        self.instance.state(True)
        self.wakeup()

    def remove_client(self, client: DeviceClient) -> None:
        """Detach `client` (reading for it stops at once); accepted writes stay queued."""
        if self._client is not client:
            return
        self._client = None
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self.instance.state(False)

    @property
    def client(self) -> DeviceClient | None:
        return self._client

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Let the writer and reader run (the default)."""
        self._running = True
        self._running_changed.set()
        self._running_changed = trio.Event()
        self.wakeup()

    def stop(self) -> None:
        """Pause writing and reading; queued buffers are kept."""
        self._running = False

    async def wait_queue_empty(self) -> None:
        """Return once every buffer accepted so far was written (or dropped)."""
        while self._queued:
            if self._emptied.is_set():
                self._emptied = trio.Event()
            await self._emptied.wait()

    def reset(self) -> int:
        """Drop every queued buffer (and the rest of the one being written); return
        their tokens; return how many bytes were dropped (counted in `stats.dropped`)."""
        dropped = self.buffered_bytes
        self.stats.dropped += dropped
        self._reset_gen += 1
        self._retry_first = False
        while True:
            try:
                buf = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self._queued -= 1
            self._unbuffer(len(buf.data))
            buf.release()
        self._writable.set()
        self._running_changed.set()  # a stopped writer drops its buffer too
        self._running_changed = trio.Event()
        if not self._queued:
            self._emptied.set()
        return dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer and reader tasks until cancelled; on exit every queued buffer
        is released."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                task_status.started()
        finally:
            self.reset()
