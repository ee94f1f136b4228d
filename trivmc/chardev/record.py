"""Record and replay a char device's traffic (like QEMU's chardev record/replay).

A `Recorder` on a frontend (`SpiceChardev.recorder`) records both directions: what
the frontend hands the backend (client -> device: data and OPENED / CLOSED / BREAK)
and what the backend hands the frontend for the attached client (device -> client:
data and port events). `RecordingBackend` wraps a backend and records the client ->
device side only. `replay_records` plays the client -> device side of a recording
into a backend through a real frontend and char device, honouring its timestamps or
not; `replay` is the synchronous form for a backend that needs no task.

File format, version 2 (all integers little-endian):

    b"TRIVREC2"                      8-byte magic (the version is its last byte)
    u16 label_length                 then that many bytes of UTF-8: what was recorded
                                     (e.g. "port:0 (org.trivmc.echo.0)"; may be empty)
    then records, each:
      u8  kind                       bits 0-6: 1 = DATA, 2 = EVENT;
                                     bit 7 (0x80): device -> client (clear: client -> device)
      u64 t_ns                       nanoseconds since the recording started (trio clock)
      u32 length                     payload length (at most 64 MiB)
      payload                        DATA: the bytes; EVENT: one byte

An EVENT's byte is, client -> device, a ChrEvent the backend got (0 OPENED: a client
attached, 1 CLOSED: it left, 2 BREAK); device -> client, a port event the backend
sent (0 OPENED, 1 CLOSED, 2 BREAK or an application's own value). Device -> client
records are written only while a client is attached (what the frontend discards
without one is not recorded). Records are in the order they happened; t_ns never
decreases. The recording starts when the recorder is made inside trio, else at its
first record.

Version 1 (b"TRIVREC1", still read) has no label and no direction bit: every record is
client -> device.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import trio

from .buffer import WriteBuffer
from .device import CharDevice
from .frontend import PORT_EVENT_BREAK, SpiceChardev
from .interface import CharBackend, ChrEvent, DeviceData, DeviceSubtype, Direction

log = logging.getLogger(__name__)

MAGIC_V1 = b"TRIVREC1"
MAGIC = MAGIC_V2 = b"TRIVREC2"
_REC = struct.Struct("<BQI")
_LABEL = struct.Struct("<H")
DATA, EVENT = 1, 2
TO_CLIENT_BIT = 0x80
MAX_RECORD = 64 * 1024 * 1024
MAX_LABEL = 0xFFFF
STALL_TIMEOUT = 10.0
_CHR_EVENTS = frozenset(int(e) for e in ChrEvent)


class RecordFormatError(ValueError):
    """The file is not a trivmc record, or a record is truncated, malformed or
    oversized."""


class ReplayStalled(RuntimeError):
    """The backend took nothing for the stall timeout during a replay."""


@dataclass(frozen=True, slots=True)
class Record:
    kind: int  # DATA or EVENT
    t_ns: int
    payload: bytes
    direction: Direction = Direction.TO_DEVICE


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """A recording's header: its format version and label."""

    version: int
    label: str


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
        raw = label.encode()
        if len(raw) > MAX_LABEL:
            raise ValueError(f"recording label longer than {MAX_LABEL} bytes")
        self.file = file
        self.label = label
        self.records = 0
        self.closed = False
        self._t0: float | None = trio.current_time() if _in_trio() else None
        file.write(MAGIC_V2 + _LABEL.pack(len(raw)) + raw)

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
        if direction is Direction.TO_CLIENT:
            kind |= TO_CLIENT_BIT
        head = _REC.pack(kind, self._t_ns(), len(payload))
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


# ---- reading -------------------------------------------------------------------------


def _read_exact(file: BinaryIO, n: int, what: str) -> bytes:
    data = file.read(n)
    if len(data) < n:
        raise RecordFormatError(f"truncated {what} ({len(data)} of {n} bytes)")
    return data


def read_header(file: BinaryIO) -> RecordingInfo:
    """Read and check the magic (and the version 2 label); the file is left at the
    first record."""
    magic = file.read(len(MAGIC_V2))
    if magic == MAGIC_V1:
        return RecordingInfo(1, "")
    if magic != MAGIC_V2:
        if len(magic) == len(MAGIC_V2) and magic[:7] == MAGIC_V2[:7]:
            raise RecordFormatError(f"unsupported recording version {magic[7:]!r}")
        raise RecordFormatError("not a trivmc chardev recording (bad magic)")
    (n,) = _LABEL.unpack(_read_exact(file, _LABEL.size, "header"))
    raw = _read_exact(file, n, "header label")
    try:
        label = raw.decode()
    except UnicodeDecodeError:
        raise RecordFormatError("header label is not UTF-8") from None
    return RecordingInfo(2, label)


def iter_records(file: BinaryIO, version: int) -> Iterator[Record]:
    """The records after the header (`read_header` read it), checked: sizes bounded
    before reading, kinds and event payloads validated, times non-decreasing.
    Raises RecordFormatError naming the record and its offset."""
    index = 0
    last_t = 0
    while True:
        offset = file.tell() if file.seekable() else -1
        where = f"record {index}" + (f" at offset {offset}" if offset >= 0 else "")
        head = file.read(_REC.size)
        if not head:
            return
        if len(head) < _REC.size:
            raise RecordFormatError(
                f"{where}: truncated header ({len(head)} of {_REC.size} bytes)"
            )
        kind, t_ns, length = _REC.unpack(head)
        direction = Direction.TO_DEVICE
        if version >= 2 and kind & TO_CLIENT_BIT:
            direction = Direction.TO_CLIENT
            kind &= ~TO_CLIENT_BIT
        if kind not in (DATA, EVENT):
            raise RecordFormatError(f"{where}: bad kind {head[0]:#04x}")
        if length > MAX_RECORD:
            raise RecordFormatError(f"{where}: length {length} above {MAX_RECORD}")
        if kind == EVENT and length != 1:
            raise RecordFormatError(f"{where}: an event of {length} bytes (needs 1)")
        if t_ns < last_t:
            raise RecordFormatError(f"{where}: time goes backwards ({t_ns} < {last_t} ns)")
        payload = file.read(length)
        if len(payload) < length:
            raise RecordFormatError(
                f"{where}: truncated payload ({len(payload)} of {length} bytes)"
            )
        if kind == EVENT and direction is Direction.TO_DEVICE and payload[0] not in _CHR_EVENTS:
            raise RecordFormatError(f"{where}: unknown event {payload[0]}")
        last_t = t_ns
        index += 1
        yield Record(kind, t_ns, payload, direction)


def read_records(file: BinaryIO) -> Iterator[Record]:
    """The records of a recording (version 1 or 2), checked (see `iter_records`)."""
    info = read_header(file)
    yield from iter_records(file, info.version)


# ---- replay --------------------------------------------------------------------------


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
    device = CharDevice(chardev)
    chardev.attach(device)
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


def first_bytes(data: bytes, limit: int = 16) -> str:
    """The first `limit` bytes as hex, then as text (non-printable bytes as dots)."""
    head = data[:limit]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    more = "..." if len(data) > limit else ""
    return f"{head.hex(' ')}{more}  |{text}|"


def summary(info: RecordingInfo, records: Iterable[Record]) -> Iterator[str]:
    """A readable listing of a recording: one line per record (time, direction, size,
    first bytes), then totals per direction."""
    yield f"trivmc recording, format version {info.version}" + (
        f", {info.label}" if info.label else ""
    )
    totals = {d: [0, 0, 0] for d in Direction}  # records, data bytes, events
    last_ns = 0
    count = 0
    for i, rec in enumerate(records):
        arrow = "c->d" if rec.direction is Direction.TO_DEVICE else "d->c"
        t = f"{rec.t_ns / 1e9:12.6f}s"
        tot = totals[rec.direction]
        tot[0] += 1
        if rec.kind == DATA:
            tot[1] += len(rec.payload)
            yield f"{i:6d} {t} {arrow} data {len(rec.payload):8d} B  {first_bytes(rec.payload)}"
        else:
            tot[2] += 1
            yield f"{i:6d} {t} {arrow} event {_event_name(rec)}"
        last_ns = rec.t_ns
        count += 1
    for d, (n, size, evs) in totals.items():
        arrow = "client->device" if d is Direction.TO_DEVICE else "device->client"
        yield f"{arrow}: {n} records, {size} data bytes, {evs} events"
    yield f"{count} records over {last_ns / 1e9:.6f} s"


def _event_name(rec: Record) -> str:
    value = rec.payload[0]
    names = {0: "OPENED", 1: "CLOSED", 2: "BREAK"}
    return names.get(value, f"port event {value}")


__all__ = [
    "DATA",
    "EVENT",
    "MAGIC",
    "MAGIC_V1",
    "MAGIC_V2",
    "MAX_RECORD",
    "Direction",
    "Record",
    "RecordFormatError",
    "Recorder",
    "RecordingBackend",
    "RecordingInfo",
    "ReplayResult",
    "ReplayStalled",
    "RunnableBackend",
    "first_bytes",
    "iter_records",
    "read_header",
    "read_records",
    "replay",
    "replay_records",
    "summary",
]
