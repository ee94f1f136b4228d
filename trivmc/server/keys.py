"""Link keys made ahead of time in a separate process (a task of the server's nursery).

Every SPICE link gets a fresh RSA-1024 key. Generating one takes ~10 ms and holds the
GIL for much of it, so a generator thread would stall the event loop and every
connection with it. `KeyMaker.run` owns a child process (`keygen_worker.py`) that makes
the keys at the lowest CPU priority (it uses only what the server and its clients
leave); the loop only parses their DER (microseconds). Serving starts once the first
BATCH keys are in; the rest of the pool fills behind it. If the process cannot run,
keys are made in a thread instead (logged), so links never fail for want of a key.
"""

from __future__ import annotations

import functools
import logging
import struct
import subprocess
import sys
from pathlib import Path

import trio

from ..protocol import KeyPool
from ..protocol.ticket import LinkKey

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("keygen_worker.py")
MAX_KEY_DER = 4096
BATCH = 8  # keys asked of the worker at a time; serving starts after the first batch
QUIET = 0.05  # seconds without a link before the pool is refilled


class KeyGeneratorLost(Exception):
    """The key generator process ended or sent something that is not a key."""


class KeyMaker:
    """Keeps `pool` full. Call `want()` after taking a key; `run` refills.

    Refilling waits for a quiet moment (`quiet` seconds with no key taken), so a burst
    of links is served from the pool while no key is being made beside it; below
    `low_water` keys it refills at once."""

    def __init__(
        self,
        pool: KeyPool,
        use_process: bool = True,
        *,
        quiet: float = QUIET,
        low_water: int = BATCH,
    ) -> None:
        self.pool = pool
        self.use_process = use_process
        self.quiet = quiet
        self.low_water = low_water
        self.made_in_process = 0
        self.made_in_thread = 0
        self._wanted = trio.Event()
        self._taken_recently = False
        self._full = trio.Event()
        self._added = trio.Event()
        self._started = False
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED

    def want(self) -> None:
        self._taken_recently = True
        self._wanted.set()

    async def take(self) -> LinkKey:
        """A never-used key from the pool, as a link asks; while the pool is empty this
        waits for the maker (other connections go on) instead of making one inline."""
        while not len(self.pool) and self.pool.size:
            self.want()
            await self._added.wait()
        key = self.pool.take()
        self.want()
        return key

    def _add(self, key: LinkKey) -> None:
        self.pool.add(key)
        self._added.set()
        self._added = trio.Event()

    async def wait_full(self) -> None:
        """Return once the pool is full."""
        while self.pool.wanted:
            if self._full.is_set():
                self._full = trio.Event()
            await self._full.wait()

    async def _next_batch(self) -> int:
        """Wait until keys are wanted and the links are quiet (or the pool is low);
        return how many keys to make now."""
        while not self.pool.wanted:
            self._full.set()
            self._report_started()  # (a pool of size 0 is full from the start)
            await self._wanted.wait()
            self._wanted = trio.Event()
        while self._taken_recently and len(self.pool) > self.low_water:
            self._taken_recently = False
            await trio.sleep(self.quiet)
        return min(self.pool.wanted, BATCH)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fill the pool, report started (after the first batch), keep it full until
        cancelled."""
        self._task_status = task_status
        if self.use_process:
            try:
                await self._run_process()
            except* (OSError, KeyGeneratorLost, trio.BrokenResourceError) as group:
                why = "; ".join(str(e) for e in group.exceptions)
                log.warning("key generator process failed (%s): making keys in a thread", why)
        await self._run_thread()

    def _report_started(self) -> None:
        if not self._started:
            self._started = True
            self._task_status.started()

    async def _run_process(self) -> None:
        cmd = [sys.executable, str(WORKER)]
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
            assert proc.stdin is not None and proc.stdout is not None
            reader = _KeyReader(proc.stdout)
            try:
                while True:
                    wanted = await self._next_batch()
                    await proc.stdin.send_all(b"%d\n" % wanted)
                    for _ in range(wanted):
                        self._add(await reader.next_key())
                        self.made_in_process += 1
                    self._report_started()  # after the first batch
            finally:
                nursery.cancel_scope.cancel()

    async def _run_thread(self) -> None:
        while True:
            wanted = await self._next_batch()
            keys = KeyPool(wanted)
            self.made_in_thread += await trio.to_thread.run_sync(keys.refill)
            while len(keys):
                self._add(keys.take())
            self._report_started()


class _KeyReader:
    """Length-prefixed DER keys from the worker's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                raise KeyGeneratorLost("key generator process ended")
            self.buf += data

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
