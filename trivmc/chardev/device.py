"""CharDevice: spice-server's RedCharDevice on trio.

Client -> device: `await get_write_buffer(data)` takes a self token (128 for a VMC
device) and waits while the bytes buffered for the device reach its byte budget (both
stop the caller reading its socket, so TCP pushes back on the client);
`write_buffer_add(buf)` (or `try_write(data)`: no buffer object, a token free) writes
at once when the device runs with nothing queued, as spice-server does, and queues
what the instance does not take; the writer task writes the queue's head in place,
retrying a partial write on `wakeup_writable()` or after `RETRY_INTERVAL`. At most
`byte_budget` bytes plus one buffer are held (`buffered_bytes`).

Device -> client: `wakeup()` reads at once, inside the call, until the instance has
nothing; at `client_queue_limit` bytes queued for the client the reader task takes over.

Invariants (between two scheduling points): `buffered_bytes` is the sum of the queued
buffers' sizes; the tokens in use (`outstanding_buffers`) are the buffers alive (being
filled by a client, or queued); the writer holds no buffer across an await (it writes
the queue's head in place, pops it once written), so `reset()` may drop the whole
queue at any time; one read runs at a time (a read is synchronous from
`instance.read()` to `push_device_data()`; a `wakeup()` from inside one only flags the
reader task), so chunks reach the client in the order they were read.

Ownership: a WriteBuffer belongs to its filler until `write_buffer_add`, then to the
queue; it is released once written or by `reset()` (at a session boundary, once the
drain deadline passed; and by `run()` on the way out). Accepted buffers are the
device's, not the client's: removing a client never drops them.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections import deque
from collections.abc import AsyncIterator

import trio

from .._trio_util import AsyncBool, Level
from .buffer import WriteBuffer
from .interface import DeviceClient, DeviceInstance
from .stats import DeviceStats

VMC_TOKENS = 128  #: write buffers a client may hold (its tokens)
BYTE_BUDGET = 4 * 1024 * 1024  # client -> device bytes held per device (docs/limits.md)
MAX_READ = 64 * 1024 + 32  #: the most bytes one device read takes
CLIENT_QUEUE_LIMIT = 1024 * 1024  #: reading pauses while a client has this much queued
READ_BATCH = 256 * 1024  # bytes the reader task reads between two scheduling points
RETRY_INTERVAL = 0.1  #: seconds before a partial write is retried unwoken


class _Stop(enum.Enum):
    """Why a read stopped."""

    EMPTY = "the instance has nothing now"
    FULL = "the client's queue is at its limit"
    BATCH = "read as much as asked"
    OFF = "no client, another client, or the device stopped"


_EMPTY, _FULL, _BATCH, _OFF = _Stop.EMPTY, _Stop.FULL, _Stop.BATCH, _Stop.OFF


class CharDevice:
    """A char device with its write queue, self tokens, writer and reader tasks.

    Built with its instance, which it attaches itself to (`instance.attach(self)`),
    so the instance's wakeups reach it from then on.
    """

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
        self.max_read = max_read
        self.client_queue_limit = client_queue_limit
        self.retry_interval = retry_interval
        self.stats = DeviceStats()
        self.write_retries = 0  # writes retried after the timer or a wakeup
        self._tokens = trio.Semaphore(tokens)
        self._release = self._tokens.release  # one bound method for every buffer
        self._queue: deque[WriteBuffer] = deque()  # in order; the head is being written
        self._queue_empty = AsyncBool(True)  # the writer waits for work, a drain for none
        # plain: it changes per queued message (an AsyncValue change costs ~0.5 us);
        # `_room` (under the budget) and `_queue_empty` change only when they flip
        self._buffered = 0
        self._room = AsyncBool(True)
        self._running = Level(True)  # read per message: a plain attribute (Level)
        # after a partial write the writer waits for `_stalled` False (a wakeup) or the
        # timer; a write sets it only when partial with no wakeup during it (`_woken`,
        # plain: `wakeup_writable()` comes per message), so no wakeup is lost
        self._stalled = AsyncBool(False)
        self._woken = False
        self._readable = Level(False)  # the reader task must read on (per wakeup: Level)
        self._reading = False  # a read is running (synchronous: only re-entry sees it)
        self._client: DeviceClient | None = None
        self._reader_wait: trio.CancelScope | None = None  # the reader's wait for a client
        instance.attach(self)

    # ---- accounting ------------------------------------------------------------

    @property
    def tokens_free(self) -> int:
        """Client tokens (write buffers) free now."""
        return self._tokens.value

    @property
    def outstanding_buffers(self) -> int:
        """Buffers handed out and not yet released (the tokens in use)."""
        return self.total_tokens - self._tokens.value

    @property
    def queued_buffers(self) -> int:
        """Buffers in the write queue, the one being written included."""
        return len(self._queue)

    @property
    def buffered_bytes(self) -> int:
        """Bytes accepted for the device and not yet written."""
        return self._buffered

    @property
    def idle(self) -> bool:
        """True when every token is free and no byte is held."""
        return self._tokens.value == self.total_tokens and self._buffered == 0

    # ---- client -> device ------------------------------------------------------

    @property
    def has_room(self) -> bool:
        """A token is free and the buffered bytes are under the budget."""
        return self._tokens.value > 0 and self._buffered < self.byte_budget

    @property
    def writes_now(self) -> bool:
        """`try_write` would take data now (the device runs with nothing queued and a
        token free): a caller may make the data (decompress it) just for that."""
        return not self._queue and self._running.value and self._tokens.value > 0

    async def get_write_buffer(
        self, data: bytes | bytearray | memoryview = b"", compressed_size: int | None = None
    ) -> WriteBuffer:
        """Wait for a free token and for the buffered bytes to be under the budget,
        then wrap `data` (the caller may set `buf.data` later, before
        `write_buffer_add`, e.g. to decompress only once there is room;
        `compressed_size`: see WriteBuffer). With room it returns without a task
        switch (the hot path)."""
        if self.has_room:
            self._tokens.acquire_nowait()
        else:
            await self._tokens.acquire()
            try:
                while self._buffered >= self.byte_budget:
                    await self._room.wait_value(True)
            except BaseException:
                self._tokens.release()
                raise
        return WriteBuffer(data, self._release, compressed_size)

    @contextlib.asynccontextmanager
    async def write_buffer(
        self, data: bytes | bytearray | memoryview = b"", compressed_size: int | None = None
    ) -> AsyncIterator[WriteBuffer]:
        """Take a token and a buffer for `data` (or for what the block puts in
        `buf.data`); add it when the block ends normally, release it when the block
        raises (cancellation included)."""
        buf = await self.get_write_buffer(data, compressed_size)
        try:
            yield buf
        except BaseException:
            buf.release()
            raise
        if not buf.released:
            self.write_buffer_add(buf)

    def try_write(
        self, data: bytes | bytearray | memoryview, compressed_size: int | None = None
    ) -> bool:
        """`get_write_buffer` + `write_buffer_add` without a task switch or a buffer
        object (the hot path): when the device runs with nothing queued and a token
        free, take `data` (counted as `write_buffer_add` counts), write it now, queue
        the rest under a token, and return True. False: take the slow path."""
        if self._queue or not self._running.value or not self._tokens.value:
            return False
        self.stats.accepted(len(data), compressed_size)
        self._write_now(data if isinstance(data, memoryview) else memoryview(data), None)
        return True

    def write_buffer_add(self, buf: WriteBuffer) -> None:
        """Hand `buf` to the device, which owns it from now on (never blocks); counted
        in `stats` as a DATA payload, or as decompressed COMPRESSED_DATA with
        `buf.compressed_size`. Written at once when the device runs with nothing
        queued, as spice-server does; the rest (or all, otherwise) is queued, in order."""
        if buf.released:
            raise ValueError("buffer already released")
        self.stats.accepted(len(buf.data), buf.compressed_size)
        view = memoryview(buf.data)
        if self._queue or not self._running.value:
            self._enqueue(buf, view)
        else:
            self._write_now(view, buf)

    def _write_now(self, view: memoryview, buf: WriteBuffer | None) -> None:
        """Write now, queue the rest: under `buf`, or under a new buffer (its token is
        free: the caller checked)."""
        n = self._write(view)
        if n == len(view):
            if buf is not None:
                buf.release()
            return
        if buf is None:
            self._tokens.acquire_nowait()
            buf = WriteBuffer(b"", self._release)
        self._enqueue(buf, view[n:])

    def _write(self, view: memoryview) -> int:
        """One write into the instance, counted; a partial one with no wakeup during it
        makes the writer wait before the next. Returns the bytes written."""
        self._woken = False
        n = self.instance.write(view)
        if n:
            self.stats.written += n
        if n < len(view) and not self._woken:
            self._stalled.value = True
        return n

    def _enqueue(self, buf: WriteBuffer, rest: memoryview) -> None:
        buf.data = rest
        self._queue.append(buf)
        if len(self._queue) == 1:
            self._queue_empty.value = False
        self._buffered += len(rest)
        if self._buffered >= self.byte_budget and self._room.value:
            self._room.value = False

    def _written(self, n: int) -> None:
        """`n` bytes of the queue's head were written (or dropped)."""
        self._buffered -= n
        if self._buffered < self.byte_budget and not self._room.value:
            self._room.value = True

    def wakeup_writable(self) -> None:
        """The instance can take more data (NOTIFY_WRITABLE). Never lost: one during a
        write counts for that write."""
        self._woken = True
        if self._stalled.value:
            self._stalled.value = False

    async def _writer(self) -> None:
        """Write the queue's head in place, in order; pop it once written. It drains the
        queue without a scheduling point while the instance takes everything."""
        queue = self._queue
        while True:
            if not queue:
                await self._queue_empty.wait_value(False)
            elif not self._running.value:
                await self._running.wait(True)
            elif self._stalled.value:
                with trio.move_on_after(self.retry_interval):
                    await self._stalled.wait_value(False)
                self._stalled.value = False
                self.write_retries += 1
            else:
                buf = queue[0]
                view = buf.data
                assert isinstance(view, memoryview)  # _enqueue made it one
                n = self._write(view)
                self._written(n)
                if n == len(view):
                    queue.popleft()
                    buf.release()
                    if not queue:
                        self._queue_empty.value = True
                elif n:
                    buf.data = view[n:]

    # ---- device -> client ------------------------------------------------------

    def wakeup(self) -> None:
        """The instance may have data to read (spice_server_char_device_wakeup): read
        it now, inside this call, as spice-server does; the reader task takes over at
        the client's queue limit, or when called from inside a read. No client, or
        stopped: nothing (`attach_client()` and `start()` call it)."""
        client = self._client
        if client is None or not self._running.value:
            return
        if self._reading or self._read(client, math.inf) is _FULL:
            self._readable.set(True)

    def _read(self, client: DeviceClient, limit: float) -> _Stop:
        """Read for `client` and push each chunk to it, until one of `_Stop`; `limit`:
        the bytes after which to stop (BATCH)."""
        self._reading = True
        try:
            done = 0
            while True:
                if self._client is not client or not self._running.value:
                    return _OFF
                if client.queued_bytes >= self.client_queue_limit:
                    return _FULL
                if done >= limit:
                    return _BATCH
                data = self.instance.read(self.max_read)
                if not data:
                    return _EMPTY
                size = len(data)
                self.stats.pushed(size, client.push_device_data(data))
                done += size
        finally:
            self._reading = False

    async def _reader(self) -> None:
        """Reads on where `wakeup()` could not: after a full client queue or a wakeup
        from inside a read; a scheduling point every READ_BATCH bytes."""
        while True:
            await self._readable.wait(True)
            self._readable.set(False)  # a wakeup from now on is seen by the next wait
            client = self._client
            if client is None:
                continue
            while (why := self._read(client, READ_BATCH)) is _FULL or why is _BATCH:
                if why is _BATCH:
                    await trio.lowlevel.checkpoint()  # let the sender and others run
                    continue
                with trio.CancelScope() as scope:  # remove_client() cancels it
                    self._reader_wait = scope
                    await client.wait_queued_below(self.client_queue_limit)
                self._reader_wait = None

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
        if self._reader_wait is not None:
            self._reader_wait.cancel()
        self.instance.state(False)

    @property
    def client(self) -> DeviceClient | None:
        """The attached client, or None."""
        return self._client

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Let the writer and reader run (the default)."""
        self._running.set(True)
        self.wakeup()

    def stop(self) -> None:
        """Pause writing and reading; queued buffers are kept."""
        self._running.set(False)

    async def wait_queue_empty(self) -> None:
        """Return once every buffer accepted so far was written (or dropped)."""
        await self._queue_empty.wait_value(True)

    def reset(self) -> int:
        """Drop every queued buffer (the rest of the one being written included) and
        return their tokens; return how many bytes were dropped (counted in
        `stats.dropped`)."""
        dropped = self._buffered
        self.stats.dropped += dropped
        queue = self._queue
        while queue:
            queue.popleft().release()
        self._queue_empty.value = True
        self._written(dropped)
        self._stalled.value = False
        return dropped

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer and reader tasks until cancelled; on exit every queued buffer
        is dropped (`reset()`)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                task_status.started()
        finally:
            self.reset()
