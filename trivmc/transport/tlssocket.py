"""TLS on a plain socket's fd: a non-blocking `ssl.SSLSocket` driven by trio's
readiness waits, instead of `trio.SSLStream`'s memory BIOs.

Why (docs/architecture.md, "TLS"): `trio.SSLStream` runs OpenSSL against two
`ssl.MemoryBIO`s and moves every byte through Python: each read copies the record
from the socket into the incoming BIO, each write copies the encrypted record out of
the outgoing BIO and then into the socket, with trio's retry machinery around every
step. An `SSLSocket` lets OpenSSL read and write the fd itself; trivmc only waits for
readiness when OpenSSL says it must (WANT_READ / WANT_WRITE). Certificates, the
context's settings and the handshake are OpenSSL's, exactly as with `SSLStream`.

Guarantees: trio's stream contract (`trio.testing.check_two_way_stream` runs on it):
one sender and one receiver at a time (`BusyResourceError` otherwise), every call a
checkpoint, `receive_some(0)` a ValueError, b"" at the end of the stream (a peer that
closes without close_notify ends it too, as `https_compatible=True` does), and
`BrokenResourceError` for a failed connection or TLS error, with the cause chained.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any

import trio

from .._streams import ConflictDetector, check_max_bytes

RECEIVE_DEFAULT = 64 * 1024
TLS_RECORD = 16 * 1024  # the most one record holds, and one OpenSSL read gives
DISCARD_LIMIT = 256 * 1024


class TLSSocketStream(trio.abc.Stream):
    """A TLS connection over a socket that this stream owns (closed by `aclose`)."""

    def __init__(self, ssl_sock: ssl.SSLSocket) -> None:
        self._ssl = ssl_sock
        self._closed = False
        # bytes a write_now left to OpenSSL half done: the next send_all must begin
        # with them and be at least this long
        self.must_repeat = 0
        self._sending = ConflictDetector("another task is sending on this TLS stream")
        self._receiving = ConflictDetector("another task is receiving on this TLS stream")

    @classmethod
    def wrap(
        cls,
        sock: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> TLSSocketStream:
        """Take over `sock`'s fd (the trio socket is detached and must not be used
        again); `do_handshake` must run before anything else."""
        raw = socket.socket(fileno=sock.socket.detach())
        raw.setblocking(False)
        ssl_sock = context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,
        )
        return cls(ssl_sock)

    @property
    def ssl_object(self) -> ssl.SSLSocket:
        return self._ssl

    def getpeercert(self) -> dict[str, Any] | None:
        return self._ssl.getpeercert()

    async def _wait(self, want: ssl.SSLError) -> None:
        if isinstance(want, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self._ssl)
        else:
            await trio.lowlevel.wait_readable(self._ssl)

    async def do_handshake(self) -> None:
        """The TLS handshake; `BrokenResourceError` (with the cause) when it fails."""
        await trio.lowlevel.checkpoint()
        while True:
            self._check_open()
            try:
                self._ssl.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                await self._wait(want)
            except (ssl.SSLError, OSError) as e:
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_max_bytes(max_bytes)
        with self._receiving:
            await trio.lowlevel.checkpoint()
            size = RECEIVE_DEFAULT if max_bytes is None else max_bytes
            while True:
                self._check_open()
                try:
                    # one record at most per call: Python allocates what is asked for
                    data = self._ssl.recv(min(size, TLS_RECORD))
                    return self._more(data, size) if 0 < len(data) < size else data
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    await self._wait(want)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                except (ssl.SSLError, OSError) as e:
                    self._check_open()  # closed by another task meanwhile
                    raise trio.BrokenResourceError(f"TLS read failed: {e}") from e

    def read_now(self, view: memoryview) -> int:
        """Decrypt into `view` the records readable now, up to its length, without
        waiting; 0 at the end of the stream. Raises `ssl.SSLWantReadError` or
        `ssl.SSLWantWriteError` when nothing is readable (`wait_for` it), and
        `trio.BrokenResourceError` when the connection failed. For the channel's fast
        path (plainsocket.TLSSocketIO), which reads into shared buffers."""
        self._check_open()
        got = 0
        while got < len(view):
            try:
                n = self._ssl.recv_into(view[got:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                if got:
                    return got
                raise
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got
            except OSError as e:
                if got:
                    return got  # the error comes again at the next read
                self._check_open()
                raise trio.BrokenResourceError(f"TLS read failed: {e}") from e
            if n == 0:
                return got
            got += n
        return got

    async def wait_for(self, writable: bool) -> None:
        """Wait for what `read_now` said OpenSSL wants: the socket writable
        (SSLWantWriteError) or readable (SSLWantReadError)."""
        if writable:
            await trio.lowlevel.wait_writable(self._ssl)
        else:
            await trio.lowlevel.wait_readable(self._ssl)

    def _more(self, first: bytes, size: int) -> bytes:
        """`first` and the records already readable after it, up to `size` bytes: one
        OpenSSL read gives one record (16 KiB at most), so a large receive takes the
        rest that is there now instead of returning to the caller per record."""
        chunks = [first]
        got = len(first)
        while got < size:
            try:
                data = self._ssl.recv(min(size - got, TLS_RECORD))
            except OSError:  # nothing more now (WANT_READ), or an error or the end,
                break  # which the next receive_some reports (these bytes are kept)
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return first if len(chunks) == 1 else b"".join(chunks)

    def write_now(self, data: bytes) -> int:
        """Write `data` at once if OpenSSL and the socket take all of it: len(data);
        otherwise 0, and then the next write on this stream (a `send_all`) must begin
        with these same bytes: OpenSSL may have sent some of their records already and
        goes on from there (the buffer may move, as Python's ssl module allows, but
        its first bytes must be the same). Never blocks, never raises; 0 while a
        `send_all` is in progress or once closed."""
        if self._closed or self._sending.held or self.must_repeat or not data:
            return 0
        try:
            self._ssl.send(data)
        except OSError:  # WANT_WRITE / WANT_READ, or broken: send_all finds out
            self.must_repeat = len(data)
            return 0
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            view = memoryview(data).cast("B")
            while True:
                self._check_open()
                if not len(view):
                    self.must_repeat = 0
                    return
                try:
                    # without partial writes OpenSSL takes it all or asks for the
                    # same buffer again once the socket is ready
                    view = view[self._ssl.send(view) :]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    await self._wait(want)
                except (ssl.SSLError, OSError) as e:
                    self._check_open()
                    raise trio.BrokenResourceError(f"TLS write failed: {e}") from e

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            self._check_open()
            await trio.lowlevel.wait_writable(self._ssl)

    def _discard_unread(self) -> None:
        """Read (and drop) what the peer sent and nobody will read, up to
        `DISCARD_LIMIT` bytes: closing a socket with unread bytes resets the
        connection, and the peer would lose the alert or the last words sent to it."""
        fd = self._ssl.fileno()
        left = DISCARD_LIMIT
        while fd >= 0 and left > 0:
            try:
                data = os.read(fd, min(left, 65536))
            except OSError:  # nothing more now (EAGAIN) or broken
                return
            if not data:
                return
            left -= len(data)

    def close(self) -> None:
        """Close at once, without a checkpoint (a close_notify is sent when the socket
        takes it at once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ssl.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        self._discard_unread()
        trio.lowlevel.notify_closing(self._ssl)
        self._ssl.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
