"""The recording format: its constants, records, and the checked reader.

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

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .interface import ChrEvent, Direction

MAGIC_V1 = b"TRIVREC1"
MAGIC = MAGIC_V2 = b"TRIVREC2"
_REC = struct.Struct("<BQI")
_LABEL = struct.Struct("<H")
DATA, EVENT = 1, 2
TO_CLIENT_BIT = 0x80
MAX_RECORD = 64 * 1024 * 1024
MAX_LABEL = 0xFFFF
_CHR_EVENTS = frozenset(int(e) for e in ChrEvent)


class RecordFormatError(ValueError):
    """The file is not a trivmc record, or a record is truncated, malformed or
    oversized."""


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


def encode_header(label: str) -> bytes:
    """A version 2 header naming `label` (ValueError past MAX_LABEL bytes of UTF-8)."""
    raw = label.encode()
    if len(raw) > MAX_LABEL:
        raise ValueError(f"recording label longer than {MAX_LABEL} bytes")
    return MAGIC_V2 + _LABEL.pack(len(raw)) + raw


def encode_record_head(kind: int, direction: Direction, t_ns: int, length: int) -> bytes:
    """The head of a version 2 record (its payload, `length` bytes, follows)."""
    if direction is Direction.TO_CLIENT:
        kind |= TO_CLIENT_BIT
    return _REC.pack(kind, t_ns, length)


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
