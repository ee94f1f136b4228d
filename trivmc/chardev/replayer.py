"""Replaying a recording's client -> device side into a backend.

`replay_records` plays it into a backend through a real frontend and char device, as a
channel runs them, honouring its timestamps or not; `replay` is the synchronous form
for a backend that needs no task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import trio

from .buffer import WriteBuffer
from .device import CharDevice
from .frontend import PORT_EVENT_BREAK, SpiceChardev
from .interface import CharBackend, ChrEvent, DeviceData, DeviceSubtype, Direction
from .record_format import DATA, EVENT, Record, RecordFormatError, read_records

STALL_TIMEOUT = 10.0


class ReplayStalled(RuntimeError):
    """The backend took nothing for the stall timeout during a replay."""


def replay(file: BinaryIO, backend: CharBackend) -> int:
    """Deliver the client -> device side of a recording into `backend`, in order,
    honouring its `can_read()`, without a task; return the number of data bytes
    delivered. Raises RecordFormatError on a bad file and ReplayStalled when the
    backend stalls (can_read() == 0) with data left."""
    total = 0
    for rec in read_records(file):
        if rec.direction is not Direction.TO_DEVICE:
            continue
        if rec.kind == EVENT:
            backend.event(ChrEvent(rec.payload[0]))
            continue
        view = memoryview(rec.payload)
        while len(view):
            room = backend.can_read()
            if room <= 0:
                raise ReplayStalled("backend stalled during replay")
            backend.read(view[:room])
            total += min(room, len(view))
            view = view[room:]
    return total


class RunnableBackend(CharBackend, Protocol):
    """A backend with its task (trivmc.backends.Backend)."""

    async def run(self, chardev: SpiceChardev) -> None: ...


class _Sink:
    """The replay's client: takes (and counts) what the backend sends back."""

    queued_bytes = 0

    def __init__(self) -> None:
        self.received = 0

    def push_device_data(self, data: DeviceData) -> None:
        self.received += len(data)

    async def wait_queued_below(self, limit: int) -> None:
        await trio.lowlevel.checkpoint()


@dataclass
class ReplayResult:
    delivered: int  # client -> device data bytes the backend took
    events: int  # client -> device events replayed
    received: int  # bytes the backend sent back (discarded)


async def replay_records(
    records: Iterable[Record],
    backend: RunnableBackend,
    *,
    timing: bool = False,
    subtype: DeviceSubtype = DeviceSubtype.PORT,
    stall_timeout: float = STALL_TIMEOUT,
) -> ReplayResult:
    """Play the client -> device records into `backend`, run with a real frontend and
    char device as a channel runs it: OPENED attaches a client (after the previous
    client's session boundary), CLOSED detaches it, BREAK is a client's break, DATA
    is written through the device. With `timing`, each record waits until its time
    (trio clock, counted from the first client -> device record); otherwise they go as
    fast as the backend takes them. Returns once every byte reached the backend (a
    stream backend's peer included) and the last session ended; raises ReplayStalled
    when the backend takes nothing for `stall_timeout` seconds."""
    chardev = SpiceChardev(backend, subtype, "replay")
    device = CharDevice(chardev)  # attaches itself to the frontend
    sink = _Sink()
    delivered = events = 0
    attached = False

    def moved() -> tuple[int, int]:
        return device.buffered_bytes, int(getattr(backend, "out_bytes", 0))

    def stalled(what: str) -> ReplayStalled:
        return ReplayStalled(
            f"the backend took nothing for {stall_timeout:g} s ({what});"
            f" {sum(moved())} bytes not delivered"
        )

    async def settle(what: str, peer: bool) -> None:
        """Wait until the device wrote every byte so far into the backend (and, with
        `peer`, a stream backend sent them to its peer); ReplayStalled when nothing
        moves for `stall_timeout`."""
        drained = getattr(backend, "wait_out_drained", None) if peer else None
        while True:
            before = moved()
            with trio.move_on_after(stall_timeout):
                await device.wait_queue_empty()
                if drained is not None:
                    await drained()
                return
            if moved() == before:
                raise stalled(what)

    async def room(payload: bytes) -> WriteBuffer:
        while True:
            before = moved()
            with trio.move_on_after(stall_timeout):
                return await device.get_write_buffer(payload)
            if moved() == before:
                raise stalled("writing")

    async def boundary() -> None:
        """The session boundary: everything sent so far reaches the backend's peer,
        then a per-session peer is closed."""
        await settle("at a session boundary", peer=True)
        end_session = getattr(backend, "end_session", None)
        if end_session is not None:
            await end_session(trio.current_time())

    async def play() -> None:
        nonlocal delivered, events, attached
        start = trio.current_time()
        first_t: int | None = None
        for rec in records:
            if rec.direction is not Direction.TO_DEVICE:
                continue
            if first_t is None:
                first_t = rec.t_ns
            if timing:
                await trio.sleep_until(start + (rec.t_ns - first_t) / 1e9)
            if rec.kind == DATA:
                device.write_buffer_add(await room(rec.payload))
                delivered += len(rec.payload)
                continue
            # the backend took every byte recorded before an event before it got the
            # event: so here (a peer a connecting backend opens is up by then)
            await settle("before an event", peer=False)
            events += 1
            event = ChrEvent(rec.payload[0])
            if event == ChrEvent.OPENED and not attached:
                await boundary()
                device.attach_client(sink)
                attached = True
            elif event == ChrEvent.CLOSED and attached:
                device.remove_client(sink)
                attached = False
            elif event == ChrEvent.BREAK:
                chardev.event(PORT_EVENT_BREAK)
        await settle("at the end", peer=True)
        if attached:
            device.remove_client(sink)
        await boundary()

    failure: ReplayStalled | RecordFormatError | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(device.run)
        nursery.start_soon(backend.run, chardev)
        try:
            await play()
        except (ReplayStalled, RecordFormatError) as e:
            failure = e  # raised as it is, not in an exception group
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return ReplayResult(delivered - device.stats.dropped, events, sink.received)
