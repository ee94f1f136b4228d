"""SpiceChardev (QEMU chardev/spice.c) and record/replay."""

from __future__ import annotations

import io

import pytest
import trio
import trio.testing

from trivmc.chardev import CharDevice, ChrEvent, DeviceSubtype, SpiceChardev
from trivmc.chardev.record import RecordFormatError, RecordingBackend, read_records, replay

from .fakes import CollectingBackend, FakeClient


def test_state_once_per_change_and_break() -> None:
    be = CollectingBackend()
    fe = SpiceChardev(be, DeviceSubtype.PORT, "p")
    fe.state(True)
    fe.state(True)
    fe.event(2)  # BREAK
    fe.event(0)  # OPENED from a client is not a backend event
    fe.state(False)
    fe.state(False)
    assert be.events == [ChrEvent.OPENED, ChrEvent.BREAK, ChrEvent.CLOSED]


def test_write_loops_on_can_read_and_returns_partial() -> None:
    be = CollectingBackend(room=4)
    fe = SpiceChardev(be)
    assert fe.write(memoryview(b"abcdefghij")) == 10  # room stays 4: loops three times
    be.room = 0
    assert fe.write(memoryview(b"xyz")) == 0
    assert bytes(be.data) == b"abcdefghij"


def test_chr_write_discards_without_client() -> None:
    fe = SpiceChardev(CollectingBackend())
    assert fe.chr_write(b"guest output") == 12
    assert fe.read(100) == b""  # dropped, as QEMU does while be_open is false
    fe.state(True)
    assert fe.chr_write(b"hello") == 5
    assert fe.read(3) == b"hel" and fe.read(100) == b"lo"


def test_read_hands_whole_chunks_over_without_a_copy() -> None:
    fe = SpiceChardev(CollectingBackend())
    fe.state(True)
    big, small = bytes(range(256)) * 256, b"t" * 100
    view = memoryview(big)[1:]  # a view of bytes is kept as it is
    for chunk in (big, view, small, small):
        assert fe.chr_write(chunk) == len(chunk)
    limit = 64 * 1024 + 32
    assert fe.read(limit) is big  # the next chunk does not fit beside it: no join
    assert fe.read(limit) is view
    assert fe.read(limit) == small * 2  # small chunks are joined
    assert fe.read(limit) == b"" and fe.pending_size == 0
    assert fe.chr_write(bytearray(b"mutable")) == 7  # copied: the caller may reuse it
    assert fe.read(3) == b"mut" and fe.read(100) == b"able"


def test_port_fe_open_announced_once() -> None:
    seen: list[int] = []
    fe = SpiceChardev(CollectingBackend(), DeviceSubtype.PORT, "p", on_port_event=seen.append)
    fe.set_fe_open(True)
    fe.set_fe_open(True)
    fe.set_fe_open(False)
    assert seen == [0, 1]


async def test_send_waits_while_blocked(autojump_clock: trio.testing.MockClock) -> None:
    fe = SpiceChardev(CollectingBackend())
    dev = CharDevice(fe)  # attaches itself: the frontend wakes it
    client = FakeClient()
    payload = bytes(range(256)) * 4096  # 1 MiB > the pending limit
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        await fe.send(payload)
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(client.received) == payload
        n.cancel_scope.cancel()


async def test_record_then_replay_byte_for_byte(autojump_clock: trio.testing.MockClock) -> None:
    inner = CollectingBackend(room=1000)
    file = io.BytesIO()
    rec = RecordingBackend(inner, file)
    fe = SpiceChardev(rec)
    dev = CharDevice(fe)  # attaches itself: the frontend wakes it
    client = FakeClient()
    chunks = [bytes([i]) * (100 * i + 1) for i in range(30)]
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        for c in chunks:
            dev.write_buffer_add(await dev.get_write_buffer(c))
            await trio.sleep(0.01)
        fe.event(2)
        dev.remove_client(client)
        while dev.queued_buffers:
            await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert bytes(inner.data) == b"".join(chunks)
    file.seek(0)
    times = [r.t_ns for r in read_records(file)]
    assert times == sorted(times)
    file.seek(0)
    target = CollectingBackend(room=333)
    assert replay(file, target) == len(inner.data)
    assert target.data == inner.data and target.events == inner.events
    assert inner.events == [ChrEvent.OPENED, ChrEvent.BREAK, ChrEvent.CLOSED]


def test_replay_refuses_bad_files() -> None:
    with pytest.raises(RecordFormatError):
        replay(io.BytesIO(b"NOTAREC!"), CollectingBackend())
    with pytest.raises(RecordFormatError):
        replay(io.BytesIO(b"TRIVREC1\x01" + bytes(8) + b"\xff\xff\xff\xff"), CollectingBackend())
