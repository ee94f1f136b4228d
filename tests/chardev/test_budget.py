"""The byte budget: client -> device bytes held by a device are bounded (budget plus
the one buffer that went past it), waiting for room stops the caller, and every byte
and token comes back on every path."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trivmc.chardev import CharDevice

from .fakes import ScriptedInstance

KIB = 1024


async def test_buffers_past_the_budget_wait_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=0)  # stalled
    dev = CharDevice(inst, byte_budget=100 * KIB)
    accepted: list[int] = []
    async with trio.open_nursery() as n:
        await n.start(dev.run)

        async def client() -> None:
            for i in range(10):
                buf = await dev.get_write_buffer(bytes([i]) * (30 * KIB))
                dev.write_buffer_add(buf)
                accepted.append(i)

        n.start_soon(client)
        await trio.testing.wait_all_tasks_blocked()
        # 4 x 30 KiB: the 4th took the device past 100 KiB, the 5th waits
        assert accepted == [0, 1, 2, 3]
        assert dev.buffered_bytes == 120 * KIB
        assert dev.buffered_bytes <= dev.byte_budget + 30 * KIB
        assert dev.tokens_free == dev.total_tokens - 5  # the waiter holds a token
        inst.per_write = 10 * KIB
        while len(accepted) < 10:
            dev.wakeup_writable()
            await trio.testing.wait_all_tasks_blocked()
            assert dev.buffered_bytes <= dev.byte_budget + 30 * KIB
        while dev.queued_buffers:
            dev.wakeup_writable()
            await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"".join(bytes([i]) * (30 * KIB) for i in range(10))
    assert dev.idle and dev.buffered_bytes == 0


async def test_cancelled_while_waiting_for_room_returns_the_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dev = CharDevice(ScriptedInstance(per_write=0), byte_budget=10)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.write_buffer_add(await dev.get_write_buffer(b"x" * 20))
        with trio.move_on_after(1) as scope:
            await dev.get_write_buffer(b"y")
        assert scope.cancelled_caught
        assert dev.tokens_free == dev.total_tokens - 1
        assert dev.outstanding_buffers == 1
        dev.reset()  # drop what is queued: every byte and token comes back
        await trio.testing.wait_all_tasks_blocked()
        assert dev.idle and dev.buffered_bytes == 0
        n.cancel_scope.cancel()


async def test_data_set_after_room_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    """A buffer taken empty (room first) and filled afterwards, as COMPRESSED_DATA is
    decompressed, counts what it was filled with."""
    dev = CharDevice(ScriptedInstance(per_write=0), byte_budget=1000)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        async with dev.write_buffer(compressed_size=100) as buf:
            buf.data = b"z" * 5000
        assert dev.buffered_bytes == 5000
        with trio.move_on_after(1):
            async with dev.write_buffer(compressed_size=1) as buf:
                pytest.fail("no room: the block must not run")
        n.cancel_scope.cancel()
    assert dev.idle  # the device's run() released the queue on the way out


async def test_partial_try_write_counts_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance(per_write=100)
    dev = CharDevice(inst, byte_budget=1000)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        assert dev.try_write(b"a" * 5000)
        assert dev.buffered_bytes == 4900
        assert not dev.has_room
        inst.per_write = 1 << 30
        dev.wakeup_writable()
        await trio.testing.wait_all_tasks_blocked()
        assert dev.buffered_bytes == 0 and dev.has_room
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"a" * 5000 and dev.idle
