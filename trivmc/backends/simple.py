"""In-process backends, with no peer stream: echo, null, source:N, file:PATH."""

from __future__ import annotations

import logging

import trio

from ..chardev import ChrEvent, SpiceChardev

log = logging.getLogger(__name__)
file_log = logging.getLogger("trivmc.backends.stream")  # FileBackend's, as it was

SOURCE_CHUNK = 64 * 1024
PATTERN_PERIOD = 251


class _Base:
    chardev: SpiceChardev | None = None
    breaks = 0

    def event(self, event: ChrEvent) -> None:
        """Counts a BREAK (`breaks`); nothing else."""
        if event == ChrEvent.BREAK:
            self.breaks += 1

    async def run(self, chardev: SpiceChardev) -> None:
        """Open the frontend and wait until cancelled; starts no task."""
        self.chardev = chardev
        chardev.set_fe_open(True)
        await trio.sleep_forever()


class NullBackend(_Base):
    """Discards everything; sends nothing."""

    received = 0

    def can_read(self) -> int:
        """Always room: every byte is taken."""
        return 1 << 30

    def read(self, data: memoryview) -> None:
        """Count the bytes (`received`) and drop them."""
        self.received += len(data)


class EchoBackend(_Base):
    """Returns what it receives, in order; never drops (it stalls the writer instead)."""

    def can_read(self) -> int:
        """The frontend's pending room while a client is attached (unlimited otherwise)."""
        if self.chardev is None:
            return 0
        if not self.chardev.connected:
            return 1 << 30  # the echo of it is discarded, as QEMU drops output then
        return self.chardev.pending_room()

    def read(self, data: memoryview) -> None:
        """Write `data` back through the frontend, whole."""
        assert self.chardev is not None
        taken = self.chardev.chr_write(data)
        assert taken == len(data), "can_read() bounds what echo is given"


def pattern(offset: int, size: int) -> bytes:
    """`size` bytes of the pattern byte i = i mod 251, starting at index `offset`."""
    start = offset % PATTERN_PERIOD
    reps = (start + size) // PATTERN_PERIOD + 1
    return (bytes(range(PATTERN_PERIOD)) * reps)[start : start + size]


class SourceBackend(NullBackend):
    """Sends each client that attaches `total` bytes of the i mod 251 pattern."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._block = bytes(range(PATTERN_PERIOD)) * (SOURCE_CHUNK // PATTERN_PERIOD + 2)

    async def run(self, chardev: SpiceChardev) -> None:
        """Send each attaching client `total` pattern bytes, in this task, until cancelled."""
        self.chardev = chardev
        chardev.set_fe_open(True)
        while True:
            await chardev.wait_connected(True)
            sent = 0
            while sent < self.total and chardev.connected:
                size = min(SOURCE_CHUNK, self.total - sent)
                start = sent % PATTERN_PERIOD
                await chardev.send(memoryview(self._block)[start : start + size])
                sent += size
            log.debug("source: %d bytes sent to this client", sent)
            await chardev.wait_connected(False)


class FileBackend:
    """Appends what the client sends to a file; nothing comes back."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.chardev: SpiceChardev | None = None
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives with the backend

    def can_read(self) -> int:
        """1 MiB at a time."""
        return 1 << 20

    def read(self, data: memoryview) -> None:
        """Append `data` to the file; a failed write is logged and the data lost."""
        try:
            self._file.write(data)
            self.written += len(data)
        except OSError as e:
            file_log.error("file:%s: write failed, data lost: %s", self.path, e)

    def event(self, event: ChrEvent) -> None:
        """Ignored."""
        pass

    async def run(self, chardev: SpiceChardev) -> None:
        """Open the frontend and wait until cancelled; the file is closed on the way out."""
        self.chardev = chardev
        chardev.set_fe_open(True)
        try:
            await trio.sleep_forever()
        finally:
            self._file.close()
