"""Link keys made ahead of time in a separate process (a task of the server's nursery).

Every SPICE link gets a fresh RSA-1024 key. Generating one takes ~10 ms and holds the
GIL for much of it, so a generator thread would stall the event loop and every
connection with it. `KeyMaker.run` owns a child process (`keygen_worker.py`) that makes
the keys; the loop only parses their DER (microseconds). If the process cannot run,
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


class KeyGeneratorLost(Exception):
    """The key generator process ended or sent something that is not a key."""


class KeyMaker:
    """Keeps `pool` full. Call `want()` after taking a key; `run` refills."""

    def __init__(self, pool: KeyPool, use_process: bool = True) -> None:
        self.pool = pool
        self.use_process = use_process
        self.made_in_process = 0
        self.made_in_thread = 0
        self._wanted = trio.Event()
        self._started = False

    def want(self) -> None:
        self._wanted.set()

    async def _next_request(self) -> None:
        await self._wanted.wait()
        self._wanted = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fill the pool, report started, keep it full until cancelled."""
        if self.use_process:
            try:
                await self._run_process(task_status)
            except* (OSError, KeyGeneratorLost, trio.BrokenResourceError) as group:
                why = "; ".join(str(e) for e in group.exceptions)
                log.warning("key generator process failed (%s): making keys in a thread", why)
        await self._run_thread(task_status)

    def _report_started(self, task_status: trio.TaskStatus[None]) -> None:
        if not self._started:
            self._started = True
            task_status.started()

    async def _run_process(self, task_status: trio.TaskStatus[None]) -> None:
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
                    wanted = self.pool.wanted
                    if wanted:
                        await proc.stdin.send_all(b"%d\n" % wanted)
                        for _ in range(wanted):
                            self.pool.add(await reader.next_key())
                            self.made_in_process += 1
                    self._report_started(task_status)
                    await self._next_request()
            finally:
                nursery.cancel_scope.cancel()

    async def _run_thread(self, task_status: trio.TaskStatus[None]) -> None:
        while True:
            self.made_in_thread += await trio.to_thread.run_sync(self.pool.refill)
            self._report_started(task_status)
            await self._next_request()


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
            return LinkKey.from_trusted_der(der)
        except ValueError as e:
            raise KeyGeneratorLost(f"key generator sent a bad key: {e}") from e
