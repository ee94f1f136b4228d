"""Recording a char device's traffic as it happens (the format: record_format.py).

A `Recorder` on a frontend (`SpiceChardev.recorder`) records both directions: what
the frontend hands the backend (client -> device: data and OPENED / CLOSED / BREAK)
and what the backend hands the frontend for the attached client (device -> client:
data and port events). `RecordingBackend` wraps a backend and records the client ->
device side only. A write that fails stops the recording, never the channel.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

import trio

from .interface import CharBackend, ChrEvent, Direction
from .record_format import DATA, EVENT, encode_header, encode_record_head

# its log lines keep the name they had before the split
log = logging.getLogger("trivmc.chardev.record")


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class Recorder:
    """Writes a version 2 recording to `file`: the header at once, then one `write`
    per record (so an unbuffered file holds every record as soon as it happened).
    The caller owns `file` (`close()` closes it)."""

    def __init__(self, file: BinaryIO, label: str = "") -> None:
        header = encode_header(label)
        self.file = file
        self.label = label
        self.records = 0
        self.closed = False
        self._t0: float | None = trio.current_time() if _in_trio() else None
        file.write(header)

    def _t_ns(self) -> int:
        now = trio.current_time() if _in_trio() else 0.0
        if self._t0 is None:
            self._t0 = now
        return max(0, int((now - self._t0) * 1e9))

    def _write(
        self, kind: int, direction: Direction, payload: bytes | bytearray | memoryview
    ) -> None:
        if self.closed:
            return
        head = encode_record_head(kind, direction, self._t_ns(), len(payload))
        try:
            self.file.write(b"".join((head, payload)))
        except (OSError, ValueError) as e:  # a full disk must not stop the channel
            log.error("recording %r: write failed, recording stopped: %s", self.label, e)
            self.closed = True
            return
        self.records += 1

    def data(self, direction: Direction, data: bytes | bytearray | memoryview) -> None:
        self._write(DATA, direction, data)

    def event(self, direction: Direction, event: int) -> None:
        self._write(EVENT, direction, bytes([event]))

    def close(self) -> None:
        self.closed = True
        self.file.close()


class RecordingBackend:
    """A CharBackend proxy that records every delivery to `file` (client -> device
    records of a version 2 recording), then forwards it."""

    def __init__(self, inner: CharBackend, file: BinaryIO, label: str = "") -> None:
        self.inner = inner
        self.file = file
        self.recorder = Recorder(file, label)

    def can_read(self) -> int:
        return self.inner.can_read()

    def read(self, data: memoryview) -> None:
        self.recorder.data(Direction.TO_DEVICE, data)
        self.inner.read(data)

    def event(self, event: ChrEvent) -> None:
        self.recorder.event(Direction.TO_DEVICE, event)
        self.inner.event(event)
