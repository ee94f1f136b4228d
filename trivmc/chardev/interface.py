"""The interfaces between the char device, its device instance, a backend and a client."""

from __future__ import annotations

import enum
from typing import Protocol


class DeviceSubtype(enum.StrEnum):
    """spice-server's char device subtypes ("port" covers port and webdav channels)."""

    USBREDIR = "usbredir"
    PORT = "port"
    WEBDAV = "webdav"


class ChrEvent(enum.IntEnum):
    """QEMU chardev events seen by a backend."""

    OPENED = 0
    CLOSED = 1
    BREAK = 2


class Direction(enum.IntEnum):
    """Which way bytes cross a frontend (in a recording: record.py)."""

    TO_DEVICE = 0  # client -> device: what the backend is given
    TO_CLIENT = 1  # device -> client: what the backend hands over for the client


DeviceData = bytes | memoryview
"""Bytes from a device on their way to a client: `bytes`, or a read-only view of
`bytes` (immutable either way, so they are queued and sent without a copy)."""


class DeviceWakeups(Protocol):
    """What a device instance calls on its device: `wakeup()` (it may have data to
    read: spice_server_char_device_wakeup) and `wakeup_writable()` (it can take more)."""

    def wakeup(self) -> None:
        """The instance may have data: the device may read it within this call."""

    def wakeup_writable(self) -> None:
        """The instance can take more: the device's writer goes on (never lost)."""


class DeviceInstance(Protocol):
    """spice-server's SpiceCharDeviceInterface, as the CharDevice calls it.

    `attach(device)` is called once, by the device's constructor (spice-server sets
    the instance's `st` there): the instance wakes that device from then on. `write`
    returns how many bytes it took (0..len); `read` returns at most `max_size` bytes,
    empty when there is nothing now; neither blocks.
    """

    def attach(self, device: DeviceWakeups) -> None:
        """Wake `device` from now on; called once, by its constructor."""

    def write(self, data: memoryview) -> int:
        """Take a prefix of `data` without blocking; how many bytes were taken."""

    def read(self, max_size: int) -> DeviceData:
        """At most `max_size` bytes the instance has now, without blocking (maybe empty)."""

    def state(self, connected: bool) -> None:
        """A client attached (True) or left (False)."""

    def event(self, event: int) -> None:
        """A port event (`PortEvent`) from the client."""


class CharBackend(Protocol):
    """The QEMU side of a chardev (what `-chardev` names): takes what clients send.

    `can_read()` says how many bytes `read()` may be given now (0 = stalled: call the
    frontend's `accept_input()` when that changes); `event()` gets OPENED / CLOSED /
    BREAK.
    """

    def can_read(self) -> int:
        """How many bytes `read` may be given now; 0 means stalled."""

    def read(self, data: memoryview) -> None:
        """Take all of `data` (at most what `can_read` allowed); it is valid only during
        the call."""

    def event(self, event: ChrEvent) -> None:
        """OPENED, CLOSED or BREAK from the frontend."""


class DeviceClient(Protocol):
    """What the CharDevice needs of an attached channel client (device -> client).

    `push_device_data` queues without blocking and says how: None when the bytes went
    as they are (DATA), else the size of the compressed block they went as
    (COMPRESSED_DATA; the device counts it, stats.py). `queued_bytes` counts bytes
    queued and not yet sent, and `wait_queued_below(limit)` returns once it is below
    `limit`.
    """

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet sent."""

    def push_device_data(self, data: DeviceData) -> int | None:
        """Queue `data` without blocking; None, or the compressed block size it went as."""

    async def wait_queued_below(self, limit: int) -> None:
        """Return once fewer than `limit` bytes are queued."""
