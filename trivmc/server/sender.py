"""The outgoing side of one channel connection: framed messages in order, bounded.

A message is pushed as its framed parts (header, body: the body is never copied).
When the channel was built `direct` (a plain socket, no ACK window) and nothing is
queued or being written, `push` hands it to the kernel at once, in the caller, and
queues only what the kernel did not take (the rest of that message, already framed).
Everything else waits in a memory channel for `run()`, the sender task, which writes
whatever is queued in one gathered write (or, under an ACK window, one message at a
time as the window allows).

Counters: `queued_bytes` (bytes queued and not yet written, the channel's bound and
the char device's pause look at it), `bytes_out` (bytes written) and `messages_out`
(messages wholly written).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from .._trio_util import Pulse
from ..protocol.messages import Body
from ..transport.plainsocket import StreamIO

BATCH_BYTES = 256 * 1024
BATCH_MESSAGES = 64  # a batch of more (small) messages is joined into one buffer
GATHER_FRAMES = 64  # frames per writev when uncorking (at most 128 buffers)

Frame = tuple[Body, ...]  # one message's framed parts, or what is left of them


class Sender:
    """Guarantees: frames are written in the order pushed, each wholly before the
    next; `push` never blocks; `close()` drops whatever is queued, and nothing is
    written after it."""

    def __init__(self, io: StreamIO, *, direct: bool) -> None:
        self.io = io
        self.direct = direct and io.writes_now
        self.queued_bytes = 0
        self.bytes_out = 0
        self.messages_out = 0
        self._send, self._recv = trio.open_memory_channel[Frame](math.inf)
        # frames queued or held by the sender task: the memory channel's own count
        # cannot stand in, since a frame leaves it a scheduling point before the task
        # holding it runs (a direct write in that gap would overtake it)
        self._unwritten = 0
        self._dequeued = Pulse()  # queued_bytes went down (per write: a Pulse)
        self._closed = False
        self._held: list[tuple[Frame, int]] | None = None  # corked: frames held

    def push(self, frame: Frame, size: int) -> None:
        """Send one framed message of `size` bytes after everything pushed before."""
        if self._closed:
            return
        if self.direct and not self._unwritten:
            if self._held is not None:
                self._held.append((frame, size))
                self.queued_bytes += size
                return
            n = self.io.write_now(frame)
            self.bytes_out += n
            if n == size:
                self.messages_out += 1
                return
            if n:
                frame = _rest(frame, n)
                size -= n
        self._enqueue(frame, size)

    def _enqueue(self, frame: Frame, size: int) -> None:
        self.queued_bytes += size
        self._unwritten += 1
        self._send.send_nowait(frame)

    def cork(self) -> None:
        """Hold the frames a direct sender would write at once until `uncork()`, which
        writes them together (the replies to one read in one writev). The caller
        uncorks before anything that can wait."""
        if self.direct and self._held is None:
            self._held = []

    def uncork(self) -> None:
        """Write the held frames now, in order, in as few writes as the kernel takes;
        what it does not take is queued for the sender task, in order."""
        held, self._held = self._held, None
        if not held:
            return
        self.queued_bytes -= sum(size for _, size in held)
        self._dequeued.fire()
        if not self.direct:  # disconnected meanwhile: the queue drops them
            for frame, size in held:
                self._enqueue(frame, size)
            return
        for start in range(0, len(held), GATHER_FRAMES):
            group = held[start : start + GATHER_FRAMES]
            n = self.io.write_now([part for frame, _ in group for part in frame])
            self.bytes_out += n
            for i, (frame, size) in enumerate(group):
                if n >= size:
                    n -= size
                    self.messages_out += 1
                    continue
                self._enqueue(_rest(frame, n) if n else frame, size - n)
                for frame, size in held[start + i + 1 :]:
                    self._enqueue(frame, size)
                return

    async def wait_queued_below(self, limit: int) -> None:
        while self.queued_bytes >= limit:
            await self._dequeued.wait()

    def _batch(self, first: Frame) -> list[Frame]:
        batch = [first]
        size = sum(len(p) for p in first)
        # at least what a write_now left half done (TLS), which the queue's head holds
        least = max(BATCH_BYTES, self.io.must_repeat)
        while size < least:
            try:
                frame = self._recv.receive_nowait()
            except trio.WouldBlock:
                break
            batch.append(frame)
            size += sum(len(p) for p in frame)
        return batch

    async def run(self, before_each: Callable[[], Awaitable[None]] | None = None) -> None:
        """Write queued frames until cancelled. With `before_each` (an ACK window),
        each message waits for it and goes alone."""
        async for first in self._recv:
            if before_each is not None:
                await before_each()
                await self._write([first])
            else:
                await self._write(self._batch(first))
            del first  # written: not kept alive while waiting for the next

    async def _write(self, batch: list[Frame]) -> None:
        parts = [part for frame in batch for part in frame]
        size = sum(len(p) for p in parts)
        if len(batch) > BATCH_MESSAGES:
            parts = [b"".join(parts)]
        self.bytes_out += await self.io.send_parts(parts)
        self.messages_out += len(batch)
        self._unwritten -= len(batch)
        self.queued_bytes -= size
        self._dequeued.fire()

    def close(self) -> None:
        """Drop whatever is queued; write nothing from now on."""
        self._closed = True
        self._held = None
        self.direct = False
        self.io.forget()
        while True:
            try:
                self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self.queued_bytes = self._unwritten = 0
        self._dequeued.fire()


def _rest(frame: Frame, n: int) -> Frame:
    """What is left of `frame` once its first `n` bytes were written."""
    parts = list(frame)
    while n >= len(parts[0]):
        n -= len(parts.pop(0))
    parts[0] = memoryview(parts[0])[n:]
    return tuple(parts)
