"""Record and replay a char device's traffic (like QEMU's chardev record/replay).

The pieces, each in its own module; this one gathers them under the import path
`trivmc.chardev.record`:

- `record_format.py`: the file format (documented there), `Record`, the checked
  reader (`read_header`, `iter_records`, `read_records`) and the header/record encoders;
- `recorder.py`: `Recorder` (a frontend's, both directions) and `RecordingBackend`
  (client -> device only), writing records as they happen;
- `replayer.py`: `replay_records` (into a running backend through a real frontend and
  char device, with or without the recorded timing) and the synchronous `replay`;
- `record_listing.py`: `summary`, the readable listing `trivmc replay --show` prints.
"""

from __future__ import annotations

from .interface import Direction
from .record_format import (
    DATA,
    EVENT,
    MAGIC,
    MAGIC_V1,
    MAGIC_V2,
    MAX_LABEL,
    MAX_RECORD,
    TO_CLIENT_BIT,
    Record,
    RecordFormatError,
    RecordingInfo,
    encode_header,
    encode_record_head,
    iter_records,
    read_header,
    read_records,
)
from .record_listing import first_bytes, summary
from .recorder import Recorder, RecordingBackend
from .replayer import (
    STALL_TIMEOUT,
    ReplayResult,
    ReplayStalled,
    RunnableBackend,
    replay,
    replay_records,
)

__all__ = [
    "DATA",
    "EVENT",
    "MAGIC",
    "MAGIC_V1",
    "MAGIC_V2",
    "MAX_LABEL",
    "MAX_RECORD",
    "STALL_TIMEOUT",
    "TO_CLIENT_BIT",
    "Direction",
    "Record",
    "RecordFormatError",
    "Recorder",
    "RecordingBackend",
    "RecordingInfo",
    "ReplayResult",
    "ReplayStalled",
    "RunnableBackend",
    "encode_header",
    "encode_record_head",
    "first_bytes",
    "iter_records",
    "read_header",
    "read_records",
    "replay",
    "replay_records",
    "summary",
]
