"""MigratableCharDevice: the write queue taken from a source, restored on a target."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.chardev import VMC_TOKENS
from trivmc.chardev.migration import MigratableCharDevice

from .fakes import ScriptedInstance


async def test_the_source_hands_over_the_rest_of_the_head_and_the_queue_in_order(
    mock_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=3)  # partial writes: the head is half written
    dev = MigratableCharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        for chunk in (b"abcdefgh", b"ijk", b"lmnop"):
            dev.write_buffer_add(await dev.get_write_buffer(chunk))
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(inst.written) == b"abc" and dev.queued_buffers == 3
        data = dev.take_pending_writes()
        assert data == b"defghijklmnop"
        assert dev.idle and dev.tokens_free == VMC_TOKENS and dev.buffered_bytes == 0
        mock_clock.jump(1)  # the retry timer finds nothing: the source writes none of it
        await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"abc"
    s = dev.stats
    assert s.in_data == 16 and s.written == 3 and s.migrated_out == 13 and s.dropped == 0


async def test_nothing_pending_hands_over_nothing() -> None:
    dev = MigratableCharDevice(ScriptedInstance())
    assert dev.take_pending_writes() == b"" and dev.idle


async def test_the_target_writes_restored_bytes_before_anything_after_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=4)
    dev = MigratableCharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.restore_pending_writes(b"restored-bytes")
        assert bytes(inst.written) == b"rest"  # written at once, as far as it goes
        assert dev.outstanding_buffers == 1 and dev.buffered_bytes == 10
        assert not dev.try_write(b"x")  # something is queued: the slow path, behind it
        dev.write_buffer_add(await dev.get_write_buffer(b"+new"))
        while dev.queued_buffers:
            await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"restored-bytes+new"
    assert dev.idle and dev.stats.migrated_in == 14 and dev.stats.in_data == 4


async def test_a_stopped_target_queues_the_restored_bytes() -> None:
    inst = ScriptedInstance()
    dev = MigratableCharDevice(inst)
    dev.stop()
    dev.restore_pending_writes(b"held")
    assert inst.written == b"" and dev.buffered_bytes == 4
    dev.restore_pending_writes(b"")  # nothing: no-op even now
    with pytest.raises(RuntimeError, match="queued writes"):
        dev.restore_pending_writes(b"more")
    assert dev.reset() == 4 and dev.idle


async def test_restoring_needs_a_free_token() -> None:
    dev = MigratableCharDevice(ScriptedInstance(), tokens=1)
    buf = await dev.get_write_buffer(b"filling")
    with pytest.raises(RuntimeError, match="token"):
        dev.restore_pending_writes(b"x")
    buf.release()
    assert dev.idle


async def test_a_full_budget_holds_the_next_client_buffer() -> None:
    dev = MigratableCharDevice(ScriptedInstance(per_write=0), byte_budget=8)
    dev.restore_pending_writes(b"12345678")
    assert not dev.has_room  # a client's next DATA waits (get_write_buffer)
    assert dev.take_pending_writes() == b"12345678"
    assert dev.has_room and dev.idle


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=20), max_size=8),
    st.integers(0, 7),
    st.integers(0, 3),
)
def test_source_then_target_delivers_every_byte_once_in_order(
    chunks: list[bytes], per_write: int, source_writes: int
) -> None:
    """Whatever the source wrote before the move, what it wrote followed by what the
    target wrote is exactly what the client sent, then what it sent the target."""

    async def main() -> None:
        src_inst = ScriptedInstance(per_write=per_write)
        src = MigratableCharDevice(src_inst)
        tgt_inst = ScriptedInstance(per_write=per_write)
        tgt = MigratableCharDevice(tgt_inst)
        async with trio.open_nursery() as n:
            await n.start(src.run)
            await n.start(tgt.run)
            for chunk in chunks:
                src.write_buffer_add(await src.get_write_buffer(chunk))
            for _ in range(source_writes):
                src.wakeup_writable()
                await trio.testing.wait_all_tasks_blocked()
            tgt.restore_pending_writes(src.take_pending_writes())
            tgt.write_buffer_add(await tgt.get_write_buffer(b"after"))
            tgt_inst.per_write = 1 << 20
            while tgt.queued_buffers:
                tgt.wakeup_writable()
                await trio.testing.wait_all_tasks_blocked()
            n.cancel_scope.cancel()
        assert bytes(src_inst.written + tgt_inst.written) == b"".join(chunks) + b"after"
        assert src.idle and tgt.idle
        assert src.stats.migrated_out == tgt.stats.migrated_in
        assert src.stats.written + src.stats.migrated_out == src.stats.in_data

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
