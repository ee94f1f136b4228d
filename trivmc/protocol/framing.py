"""Data message framing: mini (6-byte) and full (18-byte) headers.

`MessageDecoder` turns arbitrary byte chunks into whole messages and refuses a message
whose declared size is above its bound as soon as the header is read, before any body
byte is buffered. `MessageEncoder` frames messages, alone or batched in one buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import MessageTooLarge

MINI_HEADER = struct.Struct("<HI")
FULL_HEADER = struct.Struct("<QHII")
MINI_HEADER_SIZE = MINI_HEADER.size  # 6
FULL_HEADER_SIZE = FULL_HEADER.size  # 18


@dataclass(frozen=True, slots=True)
class Message:
    """One framed message. `body` may be a zero-copy view of the received chunk."""

    type: int
    body: bytes | memoryview


class MessageDecoder:
    """Incremental decoder: `feed(chunk)` returns every message the chunk completes.

    Guarantees: the internal buffer never holds more than one header plus `max_size`
    body bytes; a declared size above the bound (`max_size`, or `size_limit(type)` when
    given) raises `MessageTooLarge` before the body is buffered; bodies of messages that
    lie wholly inside one chunk are memoryviews of that chunk, and bodies assembled
    from several chunks are views of their own buffer (no copy either way).
    """

    def __init__(
        self,
        mini_header: bool,
        max_size: int,
        size_limit: Callable[[int], int] | None = None,
    ) -> None:
        self.mini_header = mini_header
        self.max_size = max_size
        self._size_limit = size_limit
        self._hdr = MINI_HEADER if mini_header else FULL_HEADER
        self._hsize = self._hdr.size
        self._buf = bytearray()
        self._need = 0  # body size of the message being assembled in _buf, -1 = header
        self._type = -1

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buf)

    def _check(self, mtype: int, size: int) -> None:
        limit = self.max_size if self._size_limit is None else self._size_limit(mtype)
        if size > limit:
            raise MessageTooLarge(f"message type {mtype} declares {size} bytes, bound {limit}")

    def _parse_header(self, data: bytes | bytearray | memoryview, off: int) -> tuple[int, int]:
        if self.mini_header:
            mtype, size = MINI_HEADER.unpack_from(data, off)
        else:
            _serial, mtype, size, _sub = FULL_HEADER.unpack_from(data, off)
        self._check(mtype, size)
        return mtype, size

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message]:
        """Consume `chunk`; return the messages it completes, in order."""
        out: list[Message] = []
        view = memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else memoryview(chunk)
        n = len(view)
        off = 0
        hsize = self._hsize
        buf = self._buf
        if buf:
            # finish the partial header and/or body kept from earlier chunks
            if self._type < 0:
                take = min(hsize - len(buf), n)
                buf += view[:take]
                off = take
                if len(buf) < hsize:
                    return out
                self._type, self._need = self._parse_header(buf, 0)
                buf.clear()
            take = min(self._need - len(buf), n - off)
            buf += view[off : off + take]
            off += take
            if len(buf) < self._need:
                return out
            # hand the assembled body out as a view and start a fresh buffer (no copy)
            out.append(Message(self._type, memoryview(buf)))
            self._buf = buf = bytearray()
            self._type = -1
        elif self._type >= 0:
            # header complete earlier, body empty so far
            take = min(self._need, n)
            if take == self._need:
                out.append(Message(self._type, view[:take]))
                self._type = -1
                off = take
            else:
                buf += view[:take]
                return out
        while off < n:
            if n - off < hsize:
                buf += view[off:]
                return out
            mtype, size = self._parse_header(view, off)
            off += hsize
            end = off + size
            if end <= n:
                out.append(Message(mtype, view[off:end]))
                off = end
            else:
                self._type, self._need = mtype, size
                buf += view[off:]
                return out
        return out


class MessageEncoder:
    """Frames outgoing messages; keeps the per-direction serial of the full header."""

    def __init__(self, mini_header: bool) -> None:
        self.mini_header = mini_header
        self.serial = 0

    def header(self, mtype: int, size: int) -> bytes:
        """The header for one message of `size` body bytes."""
        if self.mini_header:
            return MINI_HEADER.pack(mtype, size)
        self.serial += 1
        return FULL_HEADER.pack(self.serial, mtype, size, 0)

    def encode(self, mtype: int, body: bytes | bytearray | memoryview = b"") -> bytes:
        """One framed message."""
        return self.header(mtype, len(body)) + body

    def encode_many(self, messages: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> bytes:
        """Many framed messages batched into one buffer (one send)."""
        parts: list[bytes | bytearray | memoryview] = []
        for mtype, body in messages:
            parts.append(self.header(mtype, len(body)))
            parts.append(body)
        return b"".join(parts)
