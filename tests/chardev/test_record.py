"""The recording format (version 2, both directions; version 1 still read), the
frontend's recorder, and replay into a running backend."""

from __future__ import annotations

import functools
import io
import struct

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend, TcpConnectBackend
from trivmc.chardev import CharDevice, ChrEvent, DeviceSubtype, SpiceChardev
from trivmc.chardev.record import (
    DATA,
    EVENT,
    MAGIC_V1,
    Direction,
    Record,
    Recorder,
    RecordFormatError,
    RecordingBackend,
    ReplayStalled,
    iter_records,
    read_header,
    read_records,
    replay,
    replay_records,
    summary,
)

from .fakes import CollectingBackend, FakeClient

TO_DEVICE, TO_CLIENT = Direction.TO_DEVICE, Direction.TO_CLIENT


def rec(kind: int, t: int, payload: bytes, direction: Direction = TO_DEVICE) -> Record:
    return Record(kind, t, payload, direction)


async def test_round_trip_both_directions(autojump_clock: trio.testing.MockClock) -> None:
    file = io.BytesIO()
    recorder = Recorder(file, "port:0 (org.test.0)")
    recorder.event(TO_DEVICE, ChrEvent.OPENED)
    await trio.sleep(0.25)
    recorder.data(TO_DEVICE, memoryview(b"ping"))
    recorder.data(TO_CLIENT, bytearray(b"pong"))
    await trio.sleep(1.5)
    recorder.event(TO_CLIENT, 7)  # an application's own port event
    recorder.data(TO_DEVICE, b"")
    recorder.event(TO_DEVICE, ChrEvent.CLOSED)
    assert recorder.records == 6
    file.seek(0)
    assert read_header(file).label == "port:0 (org.test.0)"
    file.seek(0)
    assert list(read_records(file)) == [
        rec(EVENT, 0, b"\x00"),
        rec(DATA, 250_000_000, b"ping"),
        rec(DATA, 250_000_000, b"pong", TO_CLIENT),
        rec(EVENT, 1_750_000_000, b"\x07", TO_CLIENT),
        rec(DATA, 1_750_000_000, b""),
        rec(EVENT, 1_750_000_000, b"\x01"),
    ]
    raw = file.getvalue()
    assert raw.startswith(b"TRIVREC2" + struct.pack("<H", 19) + b"port:0 (org.test.0)")
    # the direction is bit 7 of the kind byte: the d->c DATA record is kind 0x81
    assert b"\x81" + struct.pack("<QI", 250_000_000, 4) + b"pong" in raw


def test_recorder_made_outside_trio_starts_at_its_first_record() -> None:
    file = io.BytesIO()
    Recorder(file).data(TO_DEVICE, b"x")
    file.seek(0)
    assert [r.t_ns for r in read_records(file)] == [0]


def test_version_1_files_are_still_read() -> None:
    body = struct.pack("<BQI", 2, 0, 1) + b"\x00" + struct.pack("<BQI", 1, 5, 3) + b"abc"
    file = io.BytesIO(MAGIC_V1 + body)
    info = read_header(file)
    assert (info.version, info.label) == (1, "")
    file.seek(0)
    assert list(read_records(file)) == [rec(EVENT, 0, b"\x00"), rec(DATA, 5, b"abc")]
    # version 1 has no direction bit: 0x81 is a bad kind there
    with pytest.raises(RecordFormatError, match="bad kind 0x81"):
        list(read_records(io.BytesIO(MAGIC_V1 + struct.pack("<BQI", 0x81, 0, 0))))
    target = CollectingBackend()
    assert replay(io.BytesIO(MAGIC_V1 + body), target) == 3
    assert target.events == [ChrEvent.OPENED] and target.data == b"abc"


def v2(*records: bytes, label: bytes = b"") -> bytes:
    return b"TRIVREC2" + struct.pack("<H", len(label)) + label + b"".join(records)


def r2(kind: int, t: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<BQI", kind, t, n) + payload


GOOD = r2(1, 10, b"abcdef")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "bad magic"),
        (b"TRIVREC", "bad magic"),
        (b"PNG\r\n\x1a\n\0\0", "bad magic"),
        (b"TRIVREC9", "unsupported recording version b'9'"),
        (b"TRIVREC2\x05", "truncated header"),
        (b"TRIVREC2\x05\x00abc", "truncated header label"),
        (v2(label=b"\xff\xfe"), "label is not UTF-8"),
        (v2(GOOD, GOOD[:7]), "record 1 at offset 29: truncated header (7 of 13 bytes)"),
        (v2(GOOD[:-2]), "record 0 at offset 10: truncated payload (4 of 6 bytes)"),
        (v2(r2(3, 0, b"")), "bad kind 0x03"),
        (v2(r2(0x82, 0, b"")), "an event of 0 bytes"),
        (v2(r2(2, 0, b"\x00\x01")), "an event of 2 bytes"),
        (v2(r2(2, 0, b"\x09")), "unknown event 9"),
        (v2(r2(1, 0, b"", length=64 * 1024 * 1024 + 1)), "above 67108864"),
        (v2(r2(1, 10, b""), r2(1, 9, b"")), "time goes backwards (9 < 10 ns)"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_and_truncated_files_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(RecordFormatError) as e:
        list(read_records(io.BytesIO(raw)))
    assert why in str(e.value)
    with pytest.raises(RecordFormatError):
        replay(io.BytesIO(raw), CollectingBackend())


def test_a_device_to_client_event_may_be_any_byte() -> None:
    assert list(read_records(io.BytesIO(v2(r2(0x82, 0, b"\xfe"))))) == [
        rec(EVENT, 0, b"\xfe", TO_CLIENT)
    ]


async def test_the_frontend_records_both_directions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = EchoBackend()
    chardev = SpiceChardev(backend, DeviceSubtype.PORT, "org.test.0")
    device = CharDevice(chardev)
    file = io.BytesIO()
    chardev.recorder = Recorder(file, "test")
    client = FakeClient()
    async with trio.open_nursery() as nursery:
        await nursery.start(device.run)
        nursery.start_soon(backend.run, chardev)
        await trio.testing.wait_all_tasks_blocked()  # the port opened: no client, not recorded
        device.attach_client(client)
        await trio.sleep(1)
        device.write_buffer_add(await device.get_write_buffer(b"hello"))
        chardev.port_event(42)
        chardev.event(2)  # a client's BREAK
        device.remove_client(client)
        chardev.chr_write(b"nobody listens")  # discarded without a client: not recorded
        nursery.cancel_scope.cancel()
    assert bytes(client.received) == b"hello"
    file.seek(0)
    assert list(read_records(file)) == [
        rec(EVENT, 0, b"\x00"),
        rec(DATA, 1_000_000_000, b"hello"),
        rec(DATA, 1_000_000_000, b"hello", TO_CLIENT),
        rec(EVENT, 1_000_000_000, b"\x2a", TO_CLIENT),
        rec(EVENT, 1_000_000_000, b"\x02"),
        rec(EVENT, 1_000_000_000, b"\x01"),
    ]


def test_recording_backend_writes_version_2_device_side_only() -> None:
    file = io.BytesIO()
    wrapped = RecordingBackend(CollectingBackend(), file, "lib")
    wrapped.event(ChrEvent.OPENED)
    wrapped.read(memoryview(b"abc"))
    file.seek(0)
    assert read_header(file).version == 2
    file.seek(0)
    assert all(r.direction is TO_DEVICE for r in read_records(file))


class TimedBackend(CollectingBackend):
    """Collects what it is given with the trio time of each call; runs like a backend."""

    def __init__(self, room: int = 1 << 30) -> None:
        super().__init__(room)
        self.times: list[tuple[float, str]] = []

    def read(self, data: memoryview) -> None:
        super().read(data)
        self.times.append((trio.current_time(), bytes(data).decode()))

    def event(self, event: ChrEvent) -> None:
        super().event(event)
        self.times.append((trio.current_time(), event.name))

    async def run(self, chardev: SpiceChardev) -> None:
        chardev.set_fe_open(True)
        await trio.sleep_forever()


RECORDING = [
    rec(EVENT, 3_000_000_000, b"\x00"),  # the first c->d record: replay's time zero
    rec(DATA, 3_000_000_000, b"echo", TO_CLIENT),  # not replayed
    rec(DATA, 3_500_000_000, b"a"),
    rec(EVENT, 4_000_000_000, b"\x02"),
    rec(DATA, 6_000_000_000, b"b"),
    rec(EVENT, 6_250_000_000, b"\x01"),
]


async def test_replay_honours_the_recorded_times(autojump_clock: trio.testing.MockClock) -> None:
    backend = TimedBackend()
    start = trio.current_time()
    result = await replay_records(RECORDING, backend, timing=True)
    got = [(round(t - start, 6), what) for t, what in backend.times]
    assert got == [(0, "OPENED"), (0.5, "a"), (1.0, "BREAK"), (3.0, "b"), (3.25, "CLOSED")]
    assert (result.delivered, result.events, result.received) == (2, 3, 0)


async def test_replay_fast_does_not_wait(autojump_clock: trio.testing.MockClock) -> None:
    backend = TimedBackend()
    start = trio.current_time()
    await replay_records(RECORDING, backend, timing=False)
    assert [what for _, what in backend.times] == ["OPENED", "a", "BREAK", "b", "CLOSED"]
    assert all(t == start for t, _ in backend.times)


async def test_replay_stalls_with_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    backend = TimedBackend(room=0)  # never takes a byte
    with pytest.raises(ReplayStalled, match=r"took nothing for 5 s .*3 bytes not delivered"):
        await replay_records([rec(DATA, 0, b"abc")], backend, stall_timeout=5)


async def test_replay_into_a_connecting_backend_one_peer_per_session() -> None:
    """OPENED opens a fresh peer; bytes written after CLOSED (the departed client's,
    delivered during the drain) still reach that session's peer; replay returns once
    everything reached the peers."""
    sessions: list[bytes] = []
    done = trio.Event()

    async def peer(stream: trio.SocketStream) -> None:
        data = bytearray()
        async for chunk in stream:
            data += chunk
            if b"!" in chunk:
                await stream.send_all(b"back")
        sessions.append(bytes(data))
        if len(sessions) == 2:
            done.set()

    recording = [
        rec(EVENT, 0, b"\x00"),
        rec(DATA, 1, b"first!"),
        rec(EVENT, 2, b"\x01"),
        rec(DATA, 3, b" and its tail"),
        rec(EVENT, 4, b"\x00"),
        rec(DATA, 5, b"second " * 10_000),
    ]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, peer, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(20):
            result = await replay_records(
                recording, TcpConnectBackend("127.0.0.1", port), timing=False
            )
            await done.wait()
        nursery.cancel_scope.cancel()
    assert sessions == [b"first! and its tail", b"second " * 10_000]
    assert result.delivered == len(b"first! and its tail" + b"second " * 10_000)


def test_summary_shows_sizes_times_and_first_bytes() -> None:
    file = io.BytesIO(
        v2(
            r2(2, 0, b"\x00"),
            r2(1, 1_500_000, b"GET /\r\n\x00\x01\xff" + bytes(30)),
            r2(0x81, 2_000_000, b"ok"),
            r2(0x82, 2_000_000, b"\x05"),
            label=b"port:0 (org.test.0)",
        )
    )
    info = read_header(file)
    lines = list(summary(info, iter_records(file, info.version)))
    assert lines[0] == "trivmc recording, format version 2, port:0 (org.test.0)"
    assert "c->d event OPENED" in lines[1] and "0.000000s" in lines[1]
    assert "0.001500s c->d data       40 B" in lines[2]
    assert "47 45 54 20 2f 0d 0a 00 01 ff 00 00 00 00 00 00...  |GET /...........|" in lines[2]
    assert lines[3].endswith("d->c data        2 B  6f 6b  |ok|")
    assert lines[4].endswith("d->c event port event 5")
    assert lines[5:] == [
        "client->device: 2 records, 40 data bytes, 1 events",
        "device->client: 2 records, 2 data bytes, 1 events",
        "4 records over 0.002000 s",
    ]


def test_the_example_in_the_docs() -> None:
    example = bytes.fromhex(
        "5452495652454332 0200 7030"
        "02 0000000000000000 01000000 00"
        "01 40420f0000000000 02000000 6869"
        "81 40420f0000000000 02000000 6869"
    )
    assert len(example) == 56
    file = io.BytesIO(example)
    assert read_header(file).label == "p0"
    assert list(iter_records(file, 2)) == [
        rec(EVENT, 0, b"\x00"),
        rec(DATA, 1_000_000, b"hi"),
        rec(DATA, 1_000_000, b"hi", TO_CLIENT),
    ]
