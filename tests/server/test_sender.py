"""The outgoing queue on its own (server/sender.py), over a fake I/O whose kernel takes
as many bytes as the test says: order and counts under direct writes, partial writes,
corking and the sender task, whatever the interleaving."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.protocol.messages import Body
from trivmc.server.sender import Sender
from trivmc.transport.plainsocket import StreamIO


class FakeIO(StreamIO):
    """Takes `room` bytes at once (then nothing until the test gives more room);
    `send_parts` takes everything. Records what reached the wire, and each call."""

    writes_now = True

    def __init__(self) -> None:
        super().__init__(trio.testing.memory_stream_pair()[0])
        self.wire = bytearray()
        self.room = 1 << 30
        self.calls: list[int] = []  # parts per write_now call

    def write_now(self, parts: Sequence[Body]) -> int:
        self.calls.append(len(parts))
        data = b"".join(parts)[: self.room]
        self.room -= len(data)
        self.wire += data
        return len(data)

    async def send_parts(self, parts: list[Body]) -> int:
        await trio.lowlevel.checkpoint()
        data = b"".join(parts)
        self.wire += data
        return len(data)


def frame(i: int, size: int) -> tuple[bytes, ...]:
    header = i.to_bytes(4, "little")
    return (header, bytes([i % 251]) * size) if size else (header,)


def test_corked_frames_go_out_in_one_write() -> None:
    io = FakeIO()
    sender = Sender(io, direct=True)
    sender.cork()
    frames = [frame(i, 100) for i in range(10)]
    for f in frames:
        sender.push(f, 104)
    assert io.calls == [] and sender.queued_bytes == 1040  # held, counted
    sender.uncork()
    assert io.calls == [20] and bytes(io.wire) == b"".join(p for f in frames for p in f)
    assert sender.messages_out == 10 and sender.queued_bytes == 0


def test_what_the_kernel_does_not_take_on_uncork_is_queued_in_order() -> None:
    io = FakeIO()
    io.room = 250  # two frames and a part of the third
    sender = Sender(io, direct=True)
    sender.cork()
    frames = [frame(i, 100) for i in range(5)]
    for f in frames:
        sender.push(f, 104)
    sender.uncork()
    assert sender.messages_out == 2 and sender.queued_bytes == 5 * 104 - 250
    sender.push(frame(9, 1), 5)  # queued behind, not written now
    assert len(io.wire) == 250

    async def drain() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await sender.wait_queued_below(1)
            nursery.cancel_scope.cancel()

    trio.run(drain)
    expected = b"".join(p for f in [*frames, frame(9, 1)] for p in f)
    assert bytes(io.wire) == expected and sender.messages_out == 6


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(0, 300)),
            st.tuples(st.just("room"), st.integers(0, 2000)),
            st.tuples(st.just("cork"), st.just(0)),
            st.tuples(st.just("uncork"), st.just(0)),
            st.tuples(st.just("run"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_order_and_counts_hold_under_any_interleaving(steps: list[tuple[str, int]]) -> None:
    """Every byte pushed reaches the wire once, in push order, and the counters add
    up, whatever the kernel takes and however corking and the sender task interleave."""
    io = FakeIO()
    io.room = 0
    sender = Sender(io, direct=True)
    pushed: list[tuple[bytes, ...]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for op, arg in steps:
                if op == "push":
                    f = frame(len(pushed), arg)
                    pushed.append(f)
                    sender.push(f, sum(map(len, f)))
                elif op == "room":
                    io.room += arg
                elif op == "cork":
                    sender.cork()
                elif op == "uncork":
                    sender.uncork()
                else:  # let the sender task write what is queued, then stop it
                    async with trio.open_nursery() as task:
                        task.start_soon(sender.run)
                        await trio.testing.wait_all_tasks_blocked()
                        task.cancel_scope.cancel()
            sender.uncork()
            nursery.start_soon(sender.run)
            await sender.wait_queued_below(1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert bytes(io.wire) == b"".join(p for f in pushed for p in f)
    assert sender.messages_out == len(pushed) and sender.queued_bytes == 0
    assert sender.bytes_out == len(io.wire)
