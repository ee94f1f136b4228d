"""Data message framing: mini (6-byte) and full (18-byte) headers.

`MessageDecoder` turns arbitrary byte chunks into whole messages and refuses a message
whose declared size is above its bound as soon as the header is read, before any body
byte is buffered. `MessageEncoder` frames messages, alone or batched in one buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import MessageTooLarge, ProtocolError

MINI_HEADER = struct.Struct("<HI")
FULL_HEADER = struct.Struct("<QHII")
MINI_HEADER_SIZE = MINI_HEADER.size  #: 6: type, size
FULL_HEADER_SIZE = FULL_HEADER.size  #: 18: serial, type, size, sub-list

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class Message:
    """One framed message: its type and its body.

    `body` is a memoryview (zero copy) of the chunk it arrived in, or of a buffer the
    decoder handed over and no longer touches, or bytes. Treat it as read-only; call
    `bytes(msg.body)` to keep it beyond the chunk's lifetime if the chunk is reused.
    """

    type: int
    body: bytes | memoryview


class MessageDecoder:
    """Incremental decoder: `feed(chunk)` returns every message the chunk completes.

    Guarantees:

    - a declared size above the bound (`max_size`, or `size_limit(type)` when given)
      raises `MessageTooLarge` as soon as the header is complete, before any body byte
      is buffered; after any error every later `feed` raises it again;
    - the internal buffer never holds more than one header or one bounded body
      (`buffered <= max(header size, bound)`);
    - a body lying wholly inside one chunk is a memoryview of that chunk, and a body
      assembled from several chunks is handed over without a final copy;
    - `feed` raises only `ProtocolError` subclasses.

    `size_limit` may be replaced between two `feed` calls (a migration target raises
    MIGRATE_DATA's bound until it came).
    """

    def __init__(
        self,
        mini_header: bool,
        max_size: int,
        size_limit: Callable[[int], int] | None = None,
    ) -> None:
        self.mini_header = mini_header
        self.max_size = max_size
        self.size_limit = size_limit
        self._hsize = MINI_HEADER_SIZE if mini_header else FULL_HEADER_SIZE
        self._buf = bytearray()  # a partial header (_type < 0) or a partial body
        self._type = -1  # type of the message whose body is being assembled
        self._need = 0  # body size of that message
        self._error: ProtocolError | None = None

    @property
    def header_size(self) -> int:
        """6 for the mini header, 18 for the full one."""
        return self._hsize

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """True while a message has started (part of its header or body came) but is
        not complete: at end of stream that means the peer cut a message short."""
        return bool(self._buf) or self._type >= 0

    def _header(self, data: Buffer, off: int) -> tuple[int, int]:
        """(type, size) of the header at `off`, after checking the size bound."""
        if self.mini_header:
            mtype, size = MINI_HEADER.unpack_from(data, off)
        else:
            _serial, mtype, size, _sub = FULL_HEADER.unpack_from(data, off)
        limit = self.max_size if self.size_limit is None else self.size_limit(mtype)
        if size > limit:
            self._error = MessageTooLarge(
                f"message type {mtype} declares {size} bytes, bound {limit}"
            )
            raise self._error
        return mtype, size

    def feed(self, chunk: Buffer) -> list[Message]:
        """Consume `chunk`; return the messages it completes, in order."""
        if self._error is not None:
            raise self._error
        view = memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            view = memoryview(view.tobytes())
        out: list[Message] = []
        n = len(view)
        off = 0
        hsize = self._hsize
        if self._buf or self._type >= 0:
            off = self._resume(view, out)
            if off < 0:
                return out
        header = self._header
        while off < n:
            if n - off < hsize:
                self._buf += view[off:]
                break
            mtype, size = header(view, off)
            off += hsize
            end = off + size
            if end > n:
                self._type, self._need = mtype, size
                self._buf += view[off:]
                break
            out.append(Message(mtype, view[off:end]))
            off = end
        return out

    def _resume(self, view: memoryview, out: list[Message]) -> int:
        """Continue the message kept from earlier chunks; return the offset reached in
        `view`, or -1 when `view` is used up without completing it."""
        n = len(view)
        off = 0
        buf = self._buf
        if self._type < 0:
            take = min(self._hsize - len(buf), n)
            buf += view[:take]
            off = take
            if len(buf) < self._hsize:
                return -1
            self._type, self._need = self._header(buf, 0)
            buf.clear()
        need = self._need
        if not buf and n - off >= need:
            out.append(Message(self._type, view[off : off + need]))  # zero copy
            off += need
        else:
            take = min(need - len(buf), n - off)
            buf += view[off : off + take]
            off += take
            if len(buf) < need:
                return -1
            out.append(Message(self._type, memoryview(buf)))  # handed over, no copy
            self._buf = bytearray()
        self._type = -1
        return off


class MessageEncoder:
    """Frames outgoing messages; keeps the per-direction serial of the full header
    (1 for the first message, +1 per message)."""

    def __init__(self, mini_header: bool) -> None:
        self.mini_header = mini_header
        self.serial = 0

    def header(self, mtype: int, size: int) -> bytes:
        """The header for one message of `size` body bytes (advances the serial)."""
        if self.mini_header:
            return MINI_HEADER.pack(mtype, size)
        self.serial += 1
        return FULL_HEADER.pack(self.serial, mtype, size, 0)

    def encode(self, mtype: int, body: Buffer = b"") -> bytes:
        """One framed message."""
        return self.header(mtype, len(body)) + body

    def encode_into(self, out: bytearray, mtype: int, body: Buffer = b"") -> None:
        """Append one framed message to `out` (a batch being built)."""
        out += self.header(mtype, len(body))
        out += body

    def encode_many(self, messages: Iterable[tuple[int, Buffer]]) -> bytes:
        """Many framed messages batched into one buffer (one send)."""
        parts: list[Buffer] = []
        for mtype, body in messages:
            parts.append(self.header(mtype, len(body)))
            parts.append(body)
        return b"".join(parts)
