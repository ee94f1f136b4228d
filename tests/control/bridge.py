"""Run the real `qemu.qmp` client (asyncio) beside a trio test: an asyncio loop in a
thread, coroutines submitted to it and awaited from trio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    """An asyncio event loop running in its own thread for the life of a `with`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AsyncioThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the asyncio loop; its result (or exception) in trio."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await trio.to_thread.run_sync(future.result, timeout)
        finally:
            future.cancel()
