"""trio_util's `AsyncValue`, `AsyncBool` and `wait_any`, with type hints (trio_util has
none, so mypy would see `Any`). Only what trivmc uses is declared.

Level-triggered use, as trivmc needs it: `await v.wait_value(x)` returns at once (after
a checkpoint) when the value is `x` already, so a change made while nobody waited is
never lost. Setting `value` to what it already is costs a comparison; a change costs
a few hundred ns (the waiters are checked), so per-message paths change values only on
the slow path (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

T = TypeVar("T")

if TYPE_CHECKING:

    class AsyncValue(Generic[T]):
        """A value tasks can wait on (trio_util.AsyncValue)."""

        def __init__(self, value: T) -> None: ...

        @property
        def value(self) -> T: ...

        @value.setter
        def value(self, x: T) -> None: ...

        async def wait_value(self, value_or_predicate: T | Callable[[T], bool]) -> T:
            """Return once the value equals `value_or_predicate` (or the predicate
            holds for it), checked at once and on every change."""

    class AsyncBool(AsyncValue[bool]):
        """An `AsyncValue` of a bool, False unless told (trio_util.AsyncBool)."""

        def __init__(self, value: bool = False) -> None: ...

    async def wait_any(*fns: Callable[[], Awaitable[object]]) -> None:
        """Run each of `fns` in a nursery; return once the first returns (the others
        are cancelled)."""

else:
    from trio_util import AsyncBool, AsyncValue, wait_any


class Level:
    """A bool that tasks wait on, for the per-message paths where `AsyncBool` costs
    too much: `value` is a plain attribute, `set(v)` wakes the waiters only when it
    changes, and `wait(v)` returns at once, without a checkpoint, when the value is
    `v` already (the callers loop with checkpoints of their own).

    Measured (device→client, `source:N` through a port, cProfile of the server): with
    AsyncBool for the frontend's "full" and the device's "readable", its waits and
    sets were about a third of the server's Python time per 64 KiB chunk; a ParkingLot
    under a plain bool costs a few attribute operations."""

    __slots__ = ("_lot", "value")

    def __init__(self, value: bool = False) -> None:
        self.value = value
        self._lot = trio.lowlevel.ParkingLot()

    def set(self, value: bool) -> None:
        if value != self.value:
            self.value = value
            if self._lot:
                self._lot.unpark_all()

    async def wait(self, value: bool) -> None:
        while self.value != value:
            await self._lot.park()


class Pulse:
    """Wakes every task waiting at the moment of `fire()`; a fire with nobody waiting
    is not kept (callers re-check their condition in a loop, as with RepeatedEvent's
    `wait`). For per-message paths where `RepeatedEvent` costs too much.

    Measured (device→client, `source:N`, a SIGPROF sampler in the server): with
    RepeatedEvent for the sender's "queued bytes went down", its `set` and `wait`
    (an AsyncValue underneath: a ref-counted predicate map per wait) were about an
    eighth of the server's samples; a bare ParkingLot costs a truth test per fire."""

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    def fire(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    async def wait(self) -> None:
        await self._lot.park()


__all__ = ["AsyncBool", "AsyncValue", "Level", "Pulse", "wait_any"]
