"""Small in-memory devices and clients for char device tests."""

from __future__ import annotations

import trio

from trivmc.chardev import ChrEvent, DeviceWakeups
from trivmc.chardev.interface import DeviceData


class ScriptedInstance:
    """A DeviceInstance taking at most `per_write` bytes per write (0 = stalled)."""

    device: DeviceWakeups | None = None

    def __init__(self, per_write: int = 1 << 30) -> None:
        self.per_write = per_write
        self.written = bytearray()
        self.write_times: list[float] = []
        self.to_read: list[bytes] = []
        self.states: list[bool] = []
        self.events: list[int] = []

    def attach(self, device: DeviceWakeups) -> None:
        self.device = device

    def write(self, data: memoryview) -> int:
        self.write_times.append(trio.current_time())
        n = min(self.per_write, len(data))
        self.written += data[:n]
        return n

    def read(self, max_size: int) -> bytes:
        if not self.to_read:
            return b""
        chunk = self.to_read.pop(0)
        assert len(chunk) <= max_size
        return chunk

    def state(self, connected: bool) -> None:
        self.states.append(connected)

    def event(self, event: int) -> None:
        self.events.append(event)


class FakeClient:
    """A DeviceClient whose queue the test drains by hand."""

    def __init__(self) -> None:
        self.queued_bytes = 0
        self.received = bytearray()
        self._changed = trio.Event()

    def push_device_data(self, data: DeviceData) -> int | None:
        self.queued_bytes += len(data)
        self.received += data
        return None  # sent as it is (DATA)

    async def wait_queued_below(self, limit: int) -> None:
        while self.queued_bytes >= limit:
            await self._changed.wait()

    def drain(self) -> None:
        self.queued_bytes = 0
        self._changed.set()
        self._changed = trio.Event()


class CollectingBackend:
    """A CharBackend that keeps what it is given (room per call configurable)."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.data = bytearray()
        self.events: list[ChrEvent] = []

    def can_read(self) -> int:
        return self.room

    def read(self, data: memoryview) -> None:
        assert len(data) <= self.room
        self.data += data

    def event(self, event: ChrEvent) -> None:
        self.events.append(event)
