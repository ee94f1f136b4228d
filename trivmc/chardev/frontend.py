"""SpiceChardev: QEMU's chardev/spice.c frontend, the DeviceInstance over a CharBackend.

Client -> backend: `write()` hands the backend what its `can_read()` allows and returns
a partial count otherwise; the backend calls `accept_input()` when it can take more.
Backend -> client: `chr_write()` discards while no client is connected (as QEMU does),
otherwise keeps the data as pending and wakes the device; `send()` is the awaiting form
a trio backend uses (it waits while the pending data is not yet read).

The guest side opening and closing (`set_fe_open`) means what it means in QEMU: for a
port (webdav is a port too), PORT_EVENT OPENED/CLOSED to the client
(spice_port_set_fe_open); for usbredir's spicevmc, the channel is registered or
unregistered (spice_vmc_set_fe_open): `on_fe_open` tells the channel, which offers
itself to clients only while open.

With a `recorder` (record.py) set, everything crossing the frontend is recorded: what
the backend is given (client -> device data and events) and what it hands over for the
attached client (device -> client data and port events).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._trio_util import AsyncBool, Level
from .interface import CharBackend, ChrEvent, DeviceData, DeviceSubtype, DeviceWakeups, Direction

if TYPE_CHECKING:
    from .record import Recorder

log = logging.getLogger(__name__)

PORT_EVENT_OPENED = 0
PORT_EVENT_CLOSED = 1
PORT_EVENT_BREAK = 2
PENDING_LIMIT = 256 * 1024  #: bytes the frontend holds for the device before refusing more
_TO_DEVICE, _TO_CLIENT = Direction.TO_DEVICE, Direction.TO_CLIENT


def owned(data: bytes | bytearray | memoryview) -> DeviceData:
    """`data` as bytes the frontend may keep: `bytes`, and a view of `bytes` covering at
    least a quarter of it, are kept as they are (immutable, no copy; the view pins at
    most 4x its size); anything else is copied."""
    if isinstance(data, bytes):
        return data
    if (
        isinstance(data, memoryview)
        and isinstance(data.obj, bytes)
        and data.format == "B"
        and data.c_contiguous
        and 4 * len(data) >= len(data.obj)
    ):
        return data
    return bytes(data)


def _nothing(*_: object) -> None:
    """Stands for a callback nobody gave (and for the device before one attached)."""


class SpiceChardev:
    """The QEMU-side frontend of one SPICE char device (spicevmc or spiceport).

    Wired in one step: the channel's callbacks are constructor arguments
    (`on_port_event`: a port event for the port's client; `on_fe_open`: register or
    unregister a spicevmc channel), and the CharDevice built over it attaches itself
    (`attach`), so the backend's data and room wake that device.

    Guarantees: OPENED/CLOSED reach the backend once per change of the client state;
    data the backend hands over while a client is connected is read in order and never
    dropped; `send()` returns only when its data is pending or consumed.
    """

    def __init__(
        self,
        backend: CharBackend,
        subtype: DeviceSubtype = DeviceSubtype.PORT,
        port_name: str | None = None,
        *,
        on_port_event: Callable[[int], None] = _nothing,
        on_fe_open: Callable[[bool], None] = _nothing,
    ) -> None:
        self.backend = backend
        self.subtype = subtype
        self.port_name = port_name
        # usbredir is registered from the start unless the backend can stand for
        # QEMU's side (a socket to QEMU: open once connected); a port opens when told
        self.fe_open = subtype is DeviceSubtype.USBREDIR and not getattr(
            backend, "can_stand", False
        )
        self.recorder: Recorder | None = None  # records both directions (record.py)
        self._on_port_event = on_port_event
        self._on_fe_open = on_fe_open
        self._wakeup: Callable[[], None] = _nothing  # the device's, once attached
        self._wakeup_writable: Callable[[], None] = _nothing
        self._connected = AsyncBool(False)  # a client is attached (QEMU's be_open)
        # the same as a plain bool, read per chunk (`connected`, `chr_write`): an
        # AsyncBool's value is two property calls, the top of the device→client samples
        self.connected = False
        self._pending: deque[DeviceData] = deque()
        self._pending_size = 0  # plain: chr_write() and read() change it per message
        self._full = Level(False)  # chr_write() refused: send() waits (per chunk: Level)

    def attach(self, device: DeviceWakeups) -> None:
        """The device this frontend is the instance of (its constructor calls this):
        the backend's data and room wake it from now on."""
        self._wakeup = device.wakeup
        self._wakeup_writable = device.wakeup_writable

    # ---- DeviceInstance (called by the CharDevice) ---------------------------

    def write(self, data: memoryview) -> int:
        """vmc_write: hand the backend as much as `can_read()` allows."""
        total = len(data)
        room = self.backend.can_read()
        rec = self.recorder
        if room >= total:  # the usual case: all of it at once, no slicing
            if rec is not None:
                rec.data(_TO_DEVICE, data)
            self.backend.read(data)
            return total
        done = 0
        while done < total and room > 0:
            chunk = data[done : done + room]
            if rec is not None:
                rec.data(_TO_DEVICE, chunk)
            self.backend.read(chunk)
            done += len(chunk)
            room = self.backend.can_read()
        return done

    def read(self, max_size: int) -> DeviceData:
        """vmc_read: give the device up to `max_size` pending bytes (whole chunks are
        handed over without a copy)."""
        pending = self._pending
        if not pending:
            return b""
        first = pending[0]
        if len(first) > max_size:
            out, pending[0] = first[:max_size], first[max_size:]
        elif len(pending) == 1 or len(first) + len(pending[1]) > max_size:
            out = pending.popleft()  # one whole chunk: handed over as it is, no join
        else:
            parts: list[DeviceData] = []
            size = 0
            while pending and size + len(pending[0]) <= max_size:
                chunk = pending.popleft()
                parts.append(chunk)
                size += len(chunk)
            out = b"".join(parts)
        self._pending_size -= len(out)
        if not pending:
            self._full.set(False)
        self._wakeup_writable()  # room freed: a backend that echoes may take client data
        return out

    @property
    def pending_size(self) -> int:
        """Device output bytes waiting for the device to read them."""
        return self._pending_size

    def pending_room(self) -> int:
        """How many more bytes `chr_write` takes now (0 while no client or full)."""
        return max(0, PENDING_LIMIT - self._pending_size) if self.connected else 0

    def state(self, connected: bool) -> None:
        """vmc_state: OPENED / CLOSED to the backend, once per change."""
        if connected == self.connected:
            return
        self.connected = connected  # (`connected`: a client is attached, QEMU's be_open)
        self._connected.value = connected
        if not connected:
            # QEMU drops guest output while no client is connected
            self._pending.clear()
            self._pending_size = 0
            self._full.set(False)
        self._backend_event(ChrEvent.OPENED if connected else ChrEvent.CLOSED)

    def _backend_event(self, event: ChrEvent) -> None:
        if self.recorder is not None:
            self.recorder.event(_TO_DEVICE, event)
        self.backend.event(event)

    def event(self, event: int) -> None:
        """vmc_event / port event from the client: BREAK reaches the backend."""
        if event == PORT_EVENT_BREAK:
            self._backend_event(ChrEvent.BREAK)

    # ---- the backend side ------------------------------------------------------

    def chr_write(self, data: bytes | bytearray | memoryview) -> int:
        """spice_chr_write: how many bytes of `data` were taken (all when discarded,
        none while the pending data is at its limit)."""
        if not self.connected:
            log.debug("no client: discarding %d bytes", len(data))
            return len(data)
        if self._pending_size >= PENDING_LIMIT:
            self._full.set(True)
            return 0
        if self.recorder is not None:
            self.recorder.data(_TO_CLIENT, data)
        self._pending.append(owned(data))
        self._pending_size += len(data)
        self._wakeup()
        return len(data)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data` over, waiting (once the pending data is at its limit) until the
        device has read all that is pending, or the client left."""
        view = memoryview(data)
        while len(view):
            n = self.chr_write(view)
            view = view[n:]
            if len(view):
                await self._full.wait(False)

    async def wait_drained(self) -> None:
        """Return once the device has read every pending byte (for a handover: what
        the backend handed over reaches the client before MIGRATE), or the client left
        (its pending bytes are dropped then, as QEMU does). Used only once the backend
        stopped handing data over: it marks the frontend full while it waits."""
        while self._pending and self.connected:
            self._full.set(True)  # read() clears it once nothing is pending
            await self._full.wait(False)

    async def wait_connected(self, connected: bool = True) -> None:
        """Return once a client is attached (or, with `connected=False`, detached)."""
        await self._connected.wait_value(connected)

    def accept_input(self) -> None:
        """The backend can take data again (qemu chr_accept_input)."""
        self._wakeup_writable()

    def set_fe_open(self, is_open: bool) -> None:
        """The guest side opened or closed: a port tells its client (PORT_EVENT), a
        spicevmc channel is registered or unregistered (`on_fe_open`). Once per change."""
        if is_open == self.fe_open:
            return
        self.fe_open = is_open
        if self.subtype is not DeviceSubtype.USBREDIR:
            self.port_event(PORT_EVENT_OPENED if is_open else PORT_EVENT_CLOSED)
        else:
            self._on_fe_open(is_open)

    def port_event(self, event: int) -> None:
        """Send a port event (a byte: OPENED, CLOSED, BREAK or an application's own) to
        the port's client, as spice_server_port_event does; nothing without a client.
        ValueError for a value that is not a byte, client or not."""
        if not 0 <= event <= 255:
            raise ValueError(f"a port event is one byte (0-255), not {event}")
        if self.subtype is DeviceSubtype.USBREDIR:
            return
        if self.recorder is not None and self.connected:
            self.recorder.event(_TO_CLIENT, event)
        self._on_port_event(event)
