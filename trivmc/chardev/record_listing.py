"""A readable listing of a recording (`trivmc replay --show`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .interface import Direction
from .record_format import DATA, Record, RecordingInfo


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
