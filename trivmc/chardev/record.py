"""Record and replay what a frontend delivers to its backend (like QEMU's chardev
record/replay).

File format (all integers little-endian):

    b"TRIVREC1"                      8-byte magic
    then records, each:
      u8  kind                       1 = DATA, 2 = EVENT
      u64 t_ns                       nanoseconds since recording started (trio clock)
      u32 length                     payload length
      payload                        DATA: the bytes; EVENT: one byte (ChrEvent)

Records are in delivery order; replay reproduces the bytes and events in that order
without a client.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import trio

from .interface import CharBackend, ChrEvent

MAGIC = b"TRIVREC1"
_REC = struct.Struct("<BQI")
DATA, EVENT = 1, 2
MAX_RECORD = 64 * 1024 * 1024


class RecordFormatError(ValueError):
    """The file is not a trivmc record, or a record is truncated or oversized."""


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    t_ns: int
    payload: bytes


class RecordingBackend:
    """A CharBackend proxy that appends every delivery to `file`, then forwards it."""

    def __init__(self, inner: CharBackend, file: BinaryIO) -> None:
        self.inner = inner
        self.file = file
        self._t0 = trio.current_time() if _in_trio() else 0.0
        file.write(MAGIC)

    def _write(self, kind: int, payload: bytes) -> None:
        now = trio.current_time() if _in_trio() else 0.0
        self.file.write(_REC.pack(kind, int((now - self._t0) * 1e9), len(payload)) + payload)

    def can_read(self) -> int:
        return self.inner.can_read()

    def read(self, data: memoryview) -> None:
        self._write(DATA, bytes(data))
        self.inner.read(data)

    def event(self, event: ChrEvent) -> None:
        self._write(EVENT, bytes([event]))
        self.inner.event(event)


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def read_records(file: BinaryIO) -> Iterator[Record]:
    """The records of a recording, checked (sizes bounded before reading)."""
    if file.read(len(MAGIC)) != MAGIC:
        raise RecordFormatError("not a trivmc chardev recording")
    while True:
        head = file.read(_REC.size)
        if not head:
            return
        if len(head) < _REC.size:
            raise RecordFormatError("truncated record header")
        kind, t_ns, length = _REC.unpack(head)
        if kind not in (DATA, EVENT) or length > MAX_RECORD:
            raise RecordFormatError(f"bad record kind {kind} or length {length}")
        payload = file.read(length)
        if len(payload) < length:
            raise RecordFormatError("truncated record payload")
        yield Record(kind, t_ns, payload)


def replay(file: BinaryIO, backend: CharBackend) -> int:
    """Deliver a recording into `backend`, in order, honouring its `can_read()`;
    return the number of data bytes delivered. Raises RecordFormatError on a bad file
    and RuntimeError when the backend stalls (can_read() == 0) with data left."""
    total = 0
    for rec in read_records(file):
        if rec.kind == EVENT:
            backend.event(ChrEvent(rec.payload[0]))
            continue
        view = memoryview(rec.payload)
        while len(view):
            room = backend.can_read()
            if room <= 0:
                raise RuntimeError("backend stalled during replay")
            backend.read(view[:room])
            total += min(room, len(view))
            view = view[room:]
    return total
