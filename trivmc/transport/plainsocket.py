"""The byte I/O under a channel connection, and its one fast path: the plain socket.

`stream_io(stream)` gives a `PlainSocketIO` for a `trio.SocketStream` and a `StreamIO`
for anything else (TLS, WebSocket, in-memory streams). Both offer the same three calls:

- `receive(size)`: one read, b"" at end of stream (a view the caller drops
  before its next call);
- `send_parts(parts)`: write every byte of a list of buffers, in order;
- `write_now(parts)`: write what the kernel takes at once, without waiting or a task
  switch, and return the byte count (a `StreamIO` takes nothing: 0).

Why the fast path exists (docs/architecture.md, "The plain-socket fast path"): trio's
`SocketStream` wraps each read and write in a few layers (a lock-free conflict
detector, `sock.recv` through trio's socket wrapper, a joined buffer for `send_all`).
On a plain socket `PlainSocketIO` calls `os.read` / `os.writev` on the fd directly:
one scheduling point per call, as trio's own calls have, scatter-gather writes (a
message's header and body are never joined), and `write_now` lets a message go out in
the task that produced it, as spice-server's `red_channel_client_push` does.

Invariants: `forget()` is called before the socket closes and every call after it
fails or writes nothing, so a late write can never reach another connection that
reused the fd number; `write_now` never blocks and never raises.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

import trio

from ..protocol.messages import Body
from .tlssocket import TLSSocketStream

SHARED_BUFFERS = 4  # receive buffers a trio run shares among its plain sockets
SHARED_BUFFER_SIZE = 1024 * 1024  # as large as a channel's largest read
GATHER_MAX_PARTS = 128  # a writev takes at most IOV_MAX (1024) buffers; more are joined


class StreamIO:
    """Byte I/O over any trio stream."""

    writes_now = False  # write_now can take bytes

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive(self, size: int) -> bytes | bytearray | memoryview:
        return await self.stream.receive_some(size)

    async def send_parts(self, parts: list[Body]) -> int:
        data = b"".join(parts)
        await self.stream.send_all(data)
        return len(data)

    def write_now(self, parts: Sequence[Body]) -> int:
        return 0

    @property
    def must_repeat(self) -> int:
        """Bytes that the next `send_parts` must begin with (already handed to
        `write_now`, which took none of them): it must be at least this long."""
        return 0

    def forget(self) -> None:
        """The stream is about to close: never touch it again."""


class PlainSocketIO(StreamIO):
    """Byte I/O on a plain socket's fd (see the module docstring for why)."""

    writes_now = True

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.socket = stream.socket
        self._fd = stream.socket.fileno()

    async def receive(self, size: int) -> bytes | memoryview:
        """One read of the fd; a wait for readability only when there is nothing.

        The read goes into one of the run's shared receive buffers (`ReceiveBuffers`)
        and a view of it is returned: a fresh buffer per read costs its allocation and
        page faults, more than the kernel's copy (docs/architecture.md). The caller
        drops its views before it calls again; a buffer of which a view is still alive
        (a partial device write, a queued buffer) is not reused. When every shared
        buffer is held, the read takes a fresh `bytes` as trio's own would."""
        await trio.lowlevel.checkpoint()
        while True:
            if self._fd < 0:
                raise trio.ClosedResourceError("socket closed")
            buf = receive_buffers().get(size)
            try:
                if buf is None:
                    return os.read(self._fd, size)
                with memoryview(buf) as whole, whole[:size] as target:
                    n = os.readv(self._fd, [target])
                return memoryview(buf)[:n] if n else b""
            except BlockingIOError:
                buf = None
                await trio.lowlevel.wait_readable(self.socket)
            except OSError as e:
                raise trio.BrokenResourceError(f"socket read failed: {e}") from e

    async def send_parts(self, parts: list[Body]) -> int:
        """Every byte of `parts` with writev, in order; partial writes resume where the
        kernel stopped once the socket is writable. One scheduling point per call."""
        if len(parts) > GATHER_MAX_PARTS:
            parts = [b"".join(parts)]
        total = 0
        await trio.lowlevel.checkpoint()
        while parts:
            if self._fd < 0:
                raise trio.ClosedResourceError("socket closed")
            try:
                n = os.writev(self._fd, parts)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.socket)
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

    def write_now(self, parts: Sequence[Body]) -> int:
        if self._fd < 0:
            return 0
        try:
            return os.writev(self._fd, parts)
        except OSError:  # full (BlockingIOError) or broken: the queued path finds out
            return 0

    def forget(self) -> None:
        self._fd = -1


class TLSSocketIO(StreamIO):
    """Byte I/O over trivmc's TLS-on-the-fd stream: `write_now` writes a message at
    once when OpenSSL and the socket take all of it. When they do not, the frame is
    queued whole and the sender's next write starts with its bytes, as OpenSSL's
    retry rule requires (TLSSocketStream.write_now)."""

    writes_now = True

    def __init__(self, stream: TLSSocketStream) -> None:
        super().__init__(stream)
        self.tls = stream

    async def receive(self, size: int) -> bytes | memoryview:
        """Records decrypted into one of the run's shared receive buffers (as
        `PlainSocketIO.receive` reads into them); the buffer is taken only once
        something is readable, so a waiting connection holds none."""
        await trio.lowlevel.checkpoint()
        while True:
            buf = receive_buffers().get(size)
            if buf is None:
                return await self.tls.receive_some(size)
            try:
                with memoryview(buf) as whole, whole[:size] as target:
                    n = self.tls.read_now(target)
            except ssl.SSLWantWriteError:
                writable = True
            except ssl.SSLWantReadError:
                writable = False
            else:
                return memoryview(buf)[:n] if n else b""
            # outside the handler: the exception (and the views in its traceback) is
            # gone, so nothing of the buffer is held while this connection waits
            buf = None
            await self.tls.wait_for(writable)

    def write_now(self, parts: Sequence[Body]) -> int:
        if self._forgotten:
            return 0
        return self.tls.write_now(b"".join(parts))

    @property
    def must_repeat(self) -> int:
        return self.tls.must_repeat

    _forgotten = False

    def forget(self) -> None:
        self._forgotten = True


class ReceiveBuffers:
    """The receive buffers one trio run shares among all its plain sockets: at most
    `count` buffers of `size` bytes (4 MiB per run by default, whatever the number of
    connections), made when first needed and kept. A read is synchronous from the
    moment it gets a buffer to the moment it returns the view, so one buffer serves
    every connection in turn; `get` hands out only a buffer of which no view is
    alive."""

    def __init__(self, count: int = SHARED_BUFFERS, size: int = SHARED_BUFFER_SIZE) -> None:
        self.count = count
        self.size = size
        self.buffers: list[bytearray] = []

    def get(self, size: int) -> bytearray | None:
        """A buffer of at least `size` bytes that nobody holds a view of, or None."""
        if size > self.size:
            return None
        for buf in self.buffers:
            if _unshared(buf):
                return buf
        if len(self.buffers) < self.count:
            buf = bytearray(self.size)
            self.buffers.append(buf)
            return buf
        return None


_RECEIVE_BUFFERS = trio.lowlevel.RunVar[ReceiveBuffers]("trivmc_receive_buffers")


def receive_buffers() -> ReceiveBuffers:
    """This trio run's shared receive buffers (each run has its own: two runs in two
    threads never share one)."""
    try:
        return _RECEIVE_BUFFERS.get()
    except LookupError:
        buffers = ReceiveBuffers()
        _RECEIVE_BUFFERS.set(buffers)
        return buffers


def _unshared(buf: bytearray) -> bool:
    """No view of `buf` is alive: a bytearray with exports refuses to resize. (The
    resize is by one byte within its allocation: no copy.)"""
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True


def stream_io(stream: trio.abc.Stream) -> StreamIO:
    """The fast path for a plain socket or TLS on the fd, the generic one for any
    other stream."""
    if isinstance(stream, trio.SocketStream):
        return PlainSocketIO(stream)
    if isinstance(stream, TLSSocketStream):
        return TLSSocketIO(stream)
    return StreamIO(stream)
