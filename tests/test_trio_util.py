"""The two per-message wait primitives: `Level` (a bool tasks wait on) and `Pulse`."""

from __future__ import annotations

import trio
import trio.testing

from trivmc._trio_util import Level, Pulse


async def test_level_wait_returns_at_once_when_already_at_value() -> None:
    level = Level(True)
    with trio.CancelScope(deadline=trio.current_time()) as scope:  # already due
        await level.wait(True)  # no park, no checkpoint: the deadline is never seen
    assert not scope.cancelled_caught


async def test_level_wakes_waiters_on_change_only() -> None:
    level = Level(False)
    woke: list[bool] = []

    async def waiter() -> None:
        await level.wait(True)
        woke.append(level.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        level.set(False)  # no change: the waiter stays parked
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        level.set(True)
    assert woke == [True]


async def test_pulse_wakes_every_current_waiter() -> None:
    pulse = Pulse()
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await pulse.wait()
        woken += 1

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pulse.fire()
    assert woken == 3


async def test_pulse_fired_with_nobody_waiting_is_not_kept() -> None:
    pulse = Pulse()
    pulse.fire()  # nobody waits: forgotten
    woke = trio.Event()

    async def waiter() -> None:
        await pulse.wait()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        pulse.fire()
    assert woke.is_set()
