"""Running one trio scenario per fuzz input, on a virtual clock.

`trio.run` costs about 0.45 ms before a scenario does anything (an epoll object, a
socket pair, system tasks), more than most inputs take. The fuzz workers therefore
keep ONE trio run alive in guest mode (`GuestDriver`) and run each input's scenario as
a task in it: under `MockClock(autojump_threshold=0)` the guest never waits for I/O
(memory streams only), so every tick runs right here in the caller's thread, with no
thread hand-off. `PerInputDriver` is the plain `trio.run(...)` per input.

Either way: the clock is virtual and jumps whenever every task is blocked, so nothing
waits on real time, and a scenario that deadlocks hits its virtual deadline
(`SCENARIO_DEADLINE`) instead of hanging; trio's scheduling coin flips are re-seeded
for each input so that a crashing input replays the same way.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
import trio.testing

Scenario = Callable[[], Awaitable[None]]

SCENARIO_DEADLINE = 3600.0  # virtual seconds: only a deadlock gets there


class ScenarioHung(AssertionError):
    """Every task of a scenario stayed blocked until its virtual deadline: a deadlock."""


def _seed_scheduler() -> None:
    rng = getattr(trio._core._run, "_r", None)
    if rng is not None:
        rng.seed(0)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _bounded(scenario: Scenario) -> None:
    _seed_scheduler()
    try:
        with trio.move_on_after(SCENARIO_DEADLINE) as scope:
            await scenario()
    except BaseExceptionGroup as group:
        # one failure inside the scenario's nurseries: raise it as itself, so that
        # the fuzzer's report shows its traceback (atheris prints no group members)
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise
    if scope.cancelled_caught:
        raise ScenarioHung(f"scenario still blocked after {SCENARIO_DEADLINE} virtual s")


class Driver(Protocol):
    def run(self, scenario: Scenario) -> None: ...

    def close(self) -> None: ...


class PerInputDriver:
    """`trio.run(scenario, clock=MockClock(autojump_threshold=0))` for each input."""

    def run(self, scenario: Scenario) -> None:
        trio.run(_bounded, scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    def close(self) -> None:
        pass


class GuestDriver:
    """One long trio run in guest mode; `run()` starts the scenario as a task in it and
    turns the guest's ticks in this thread until the scenario is done."""

    def __init__(self) -> None:
        self._ticks: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._jobs, self._jobs_in = trio.open_memory_channel[tuple[Scenario, list[Any]]](math.inf)
        self._token: trio.lowlevel.TrioToken | None = None
        self._finished: list[object] = []
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self._ticks.put,
            run_sync_soon_not_threadsafe=self._ticks.put,
            done_callback=self._finished.append,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        while self._token is None:
            self._ticks.get()()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            async for scenario, box in self._jobs_in:
                nursery.start_soon(self._job, scenario, box)

    @staticmethod
    async def _job(scenario: Scenario, box: list[Any]) -> None:
        try:
            await _bounded(scenario)
        except BaseException as e:  # handed to the caller, raised there
            box.append(e)
        else:
            box.append(None)

    def run(self, scenario: Scenario) -> None:
        assert self._token is not None, "the guest run is closed"
        box: list[Any] = []
        self._token.run_sync_soon(self._jobs.send_nowait, (scenario, box))
        get = self._ticks.get
        while not box:
            get()()
        if box[0] is not None:
            raise box[0]

    def close(self) -> None:
        """End the guest run (needed before `trio.run` can be used in this thread)."""
        if self._token is None:
            return
        self._token.run_sync_soon(self._jobs.close)
        self._token = None
        while not self._finished:
            self._ticks.get()()


_driver: Driver | None = None


def driver() -> Driver:
    """The process's driver: per-input `trio.run` unless `use_driver()` chose another."""
    global _driver
    if _driver is None:
        _driver = PerInputDriver()
    return _driver


def use_driver(new: Driver | None) -> None:
    """Install `new` (None: back to the default), closing the one it replaces."""
    global _driver
    if _driver is not None and _driver is not new:
        _driver.close()
    _driver = new


def run_scenario(scenario: Scenario) -> None:
    driver().run(scenario)
