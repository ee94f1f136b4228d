"""Link keys: made ahead of time by worker processes, fresh per link only when it matters.

A SPICE link reply carries an RSA-1024 public key; the client answers with its ticket
(the password) encrypted under it. `KeyMaker.link_key` gives each link its key:

- **With a password** every link gets a never-used key from the pool (`KeyPool`), as
  spice-server makes a fresh key per link: a ticket seen on one link is worthless on
  any other.
- **With ticketing disabled** (no password) the ticket protects nothing: it must still
  decrypt (spice-server checks that, and so does `verify_ticket`), but any ticket that
  does is accepted. Such links share one long-lived key, so they cost no key making at
  all and never drain the pool. The shared key is the first key a password-less link
  takes from the pool (made ahead of time by a worker, like every key: never on the
  event loop). It is retired as soon as a link with a password is seen (the password
  may be set at runtime), and the next password-less link takes a new one: a ticket
  that a client encrypted under the shared key just as a password was being set can
  then be replayed only on links already open at that moment. It is not rotated on a
  timer: no secret travels under it, so rotating it would protect nothing.

Making a key takes ~10 ms of CPU. `KeyMaker.run` keeps the pool full with worker
processes (`keygen_worker.py`), one per core this process may run on
(`os.sched_getaffinity`, at most `MAX_WORKERS`), each at nice 19: they use only the CPU
that the server and everything else leave idle, and the event loop only parses their
DER and warms each key (under a millisecond). Serving starts once the first
BATCH keys are in; the rest of the pool fills behind it.

Refill policy: a burst of links is served from the pool with no key being made beside
it; the pool is refilled once links have been quiet for `quiet` seconds, or at once
when it is down to `low_water` keys (a long run of password links is then served as
fast as the workers make keys, every worker busy). Workers share a refill: each asks
its worker for its share of the keys missing (at most BATCH at a time) that no other
worker is already making.

A worker that dies is restarted (after `restart_delay`, doubling while it keeps dying
before it is ready, up to MAX_RESTART_DELAY); the keys it owed are asked of the others
meanwhile. A worker that cannot start at all is given up, with a warning; when every
worker is given up (no usable `python`, a sandbox without fork), keys are made in a
thread instead, so links never fail for want of a key.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio
from trio_util import RepeatedEvent

from ..protocol.ticket import LinkKey
from .keypool import KeyPool

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("keygen_worker.py")
MAX_KEY_DER = 4096
BATCH = 8  # keys asked of a worker at a time; serving starts after the first BATCH
QUIET = 0.05  # seconds without a link before the pool is refilled
MAX_WORKERS = 8  # ~20 MiB each; 8 make ~800 keys/s, more than any link rate asks
RESTART_DELAY = 1.0  # seconds before a dead worker is started again
MAX_RESTART_DELAY = 60.0
READY = struct.pack(">H", 0)  # a worker's first record: imported, niced, ready


def usable_cores() -> int:
    """How many cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


class KeyGeneratorLost(Exception):
    """A key generator process ended or sent something that is not a key."""


class KeyMaker:
    """Keeps `pool` full (`run`) and hands each link its key (`link_key`).

    `workers` worker processes make the keys (default: one per usable core, at most
    MAX_WORKERS). With `use_process=False`, or when no worker process can run, keys
    are made in one thread of this process instead. That costs the server more than
    the processes do: the thread runs at the server's own priority, so on a busy core
    it takes CPU the links could use instead of only idle CPU; it holds the GIL
    between the parts of key generation that release it (the prime search runs
    without it in current `cryptography`; older releases held it throughout), which
    stalled the event loop here for up to ~1 ms per key; and one thread gives one
    core's worth of keys at most.
    """

    def __init__(
        self,
        pool: KeyPool,
        use_process: bool = True,
        *,
        workers: int | None = None,
        quiet: float = QUIET,
        low_water: int = BATCH,
        restart_delay: float = RESTART_DELAY,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError("KeyMaker needs at least one worker")
        if restart_delay <= 0:
            raise ValueError("restart_delay must be positive")
        self.pool = pool
        self.use_process = use_process
        self.workers = workers if workers is not None else min(usable_cores(), MAX_WORKERS)
        self.quiet = quiet
        self.low_water = low_water
        self.restart_delay = restart_delay
        self.made_in_process = 0
        self.made_in_thread = 0
        self.made_by: Counter[int] = Counter()  # keys made, by worker slot
        self.worker_restarts = 0
        self.processes: dict[int, trio.Process] = {}  # the running workers, by slot
        self.ready_workers: set[int] = set()  # slots whose worker is ready for claims
        self._shared: LinkKey | None = None
        self._in_flight = 0  # keys asked of workers and not delivered yet
        self._claimants = 0  # workers waiting in _claim
        self._last_link = -math.inf
        self._changed = RepeatedEvent()  # set at every change of state
        self._started = False
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED

    # ---- the links' side ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Keys asked of the workers and not delivered yet."""
        return self._in_flight

    @property
    def shared_key(self) -> LinkKey | None:
        """The key password-less links share now (None until one is taken)."""
        return self._shared

    async def link_key(self, *, fresh: bool) -> LinkKey:
        """The key of one link: never used before when `fresh` (a password is set),
        else the key that password-less links share (see the module docstring)."""
        if fresh:
            if self._shared is not None:
                log.debug("a link with a password: the shared link key is retired")
                self._shared = None
            return await self.take()
        if self._shared is None:
            self._shared = await self.take()
        else:
            self._last_link = trio.current_time()  # a link all the same: refills wait
        return self._shared

    async def take(self) -> LinkKey:
        """A never-used key from the pool, as a link asks; while the pool is empty this
        waits for the workers (other connections go on) instead of making one inline."""
        while not len(self.pool) and self.pool.size:
            self.want()
            await self._changed.wait()
        key = self.pool.take()
        self.want()
        return key

    def want(self) -> None:
        """A key was taken (refill once links are quiet again)."""
        self._last_link = trio.current_time()
        self._poke()

    async def wait_full(self) -> None:
        """Return once the pool is full."""
        await self.wait_until(lambda: not self.pool.wanted)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds, checked at each change of the maker's state
        (a key taken or delivered, a worker ready or lost)."""
        while not condition():
            await self._changed.wait()

    # ---- bookkeeping ---------------------------------------------------------------

    def _poke(self) -> None:
        """The maker's state changed: every `_changed.wait()` returns."""
        self._changed.set()

    def _check_started(self) -> None:
        if not self._started and len(self.pool) >= min(BATCH, self.pool.size):
            self._started = True
            self._task_status.started()

    async def _claim(self) -> int:
        """Wait until keys are missing from the pool that no worker is making, and the
        links are quiet (or the pool is at low water); claim this worker's share of them
        (split evenly among the workers waiting here, at most BATCH) and return how many
        that is."""
        self._claimants += 1
        try:
            while True:
                missing = self.pool.wanted - self._in_flight
                quiet_at = self._last_link + self.quiet
                if missing <= 0:
                    await self._changed.wait()
                elif len(self.pool) > self.low_water and trio.current_time() < quiet_at:
                    with trio.move_on_at(quiet_at):
                        await self._changed.wait()  # a take may bring the pool to low water
                else:
                    count = min(BATCH, -(-missing // self._claimants))
                    self._in_flight += count
                    return count
        finally:
            self._claimants -= 1

    def _deliver(self, key: LinkKey) -> None:
        self._in_flight -= 1
        self.pool.add(key)
        self._poke()
        self._check_started()

    def _release(self, count: int) -> None:
        """Claimed keys that will not come (their worker died): for the others."""
        if count:
            self._in_flight -= count
            self._poke()

    # ---- making keys -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fill the pool, report started (after the first BATCH keys), keep it full until
        cancelled."""
        self._task_status = task_status
        self._check_started()  # (a pool of size 0 is full from the start)
        if self.use_process:
            async with trio.open_nursery() as nursery:
                for slot in range(self.workers):
                    nursery.start_soon(self._keep_worker, slot)
            log.warning("every key generator process failed: making keys in a thread")
        await self._run_thread()

    async def _keep_worker(self, slot: int) -> None:
        """Run worker `slot` and start it again whenever it dies; return (give it up)
        when its first process never got ready."""
        delay = self.restart_delay
        was_ready = False
        while True:
            ready, why = await self._run_process(slot)
            if ready:
                was_ready, delay = True, self.restart_delay
            elif not was_ready:
                log.warning("key generator process failed (worker %d: %s)", slot, why)
                return
            log.warning(
                "key generator worker %d ended (%s): starting it again in %g s", slot, why, delay
            )
            await trio.sleep(delay)
            self.worker_restarts += 1
            delay = min(2 * delay, MAX_RESTART_DELAY)

    async def _run_process(self, slot: int) -> tuple[bool, str]:
        """One worker process, serving claims until it fails: (whether it got ready,
        why it ended)."""
        cmd = [sys.executable, str(WORKER)]
        ready = False
        why = "ended"
        try:
            async with trio.open_nursery() as nursery:
                proc: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        cmd,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        check=False,
                    )
                )
                self.processes[slot] = proc
                nursery.start_soon(_watch, proc)
                try:
                    assert proc.stdin is not None and proc.stdout is not None
                    reader = _KeyReader(proc.stdout)
                    await reader.ready()
                    ready = True
                    self.ready_workers.add(slot)
                    self._poke()
                    while True:
                        await self._serve_claim(slot, proc.stdin, reader)
                finally:
                    nursery.cancel_scope.cancel()
        except* (
            OSError,
            KeyGeneratorLost,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ) as group:
            why = "; ".join(sorted({str(e) for e in _leaves(group)}))
        finally:
            self.processes.pop(slot, None)
            self.ready_workers.discard(slot)
            self._poke()
        return ready, why

    async def _serve_claim(
        self, slot: int, stdin: trio.abc.SendStream, reader: _KeyReader
    ) -> None:
        count = await self._claim()
        done = 0
        try:
            await stdin.send_all(b"%d\n" % count)
            while done < count:
                key = await reader.next_key()
                done += 1
                self.made_in_process += 1
                self.made_by[slot] += 1
                self._deliver(key)
        finally:
            self._release(count - done)

    async def _run_thread(self) -> None:
        while True:
            count = await self._claim()
            keys = KeyPool(count)
            done = 0
            try:
                self.made_in_thread += await trio.to_thread.run_sync(keys.refill)
                while len(keys):
                    done += 1
                    self._deliver(keys.take())
            finally:
                self._release(count - done)


async def _watch(proc: trio.Process) -> None:
    """Raise as soon as a worker exits, busy or idle."""
    code = await proc.wait()
    raise KeyGeneratorLost(f"key generator process exited with status {code}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class _KeyReader:
    """The worker's stdout: its READY record, then length-prefixed DER keys."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise KeyGeneratorLost("key generator process ended")
            self.buf += data

    async def ready(self) -> None:
        await self._fill(len(READY))
        if self.buf[: len(READY)] != READY:
            raise KeyGeneratorLost("key generator did not start with its ready record")
        del self.buf[: len(READY)]

    async def next_key(self) -> LinkKey:
        await self._fill(2)
        (size,) = struct.unpack_from(">H", self.buf)
        if not 0 < size <= MAX_KEY_DER:
            raise KeyGeneratorLost(f"key generator sent a key of {size} bytes")
        await self._fill(2 + size)
        der = bytes(self.buf[2 : 2 + size])
        del self.buf[: 2 + size]
        try:
            key = LinkKey.from_trusted_der(der)
            key.warm()  # off the link path: the pool refills while links are quiet
        except ValueError as e:
            raise KeyGeneratorLost(f"key generator sent a bad key: {e}") from e
        return key
