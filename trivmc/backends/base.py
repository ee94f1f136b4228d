"""The Backend shape: a CharBackend that may also run a task for the device's life."""

from __future__ import annotations

from typing import Protocol

from ..chardev import ChrEvent, SpiceChardev


class Backend(Protocol):
    """A chardev backend. `run()` is started once per device in the server's nursery and
    runs until cancelled; it must never raise for a peer's failure (log and go on)."""

    def can_read(self) -> int: ...

    def read(self, data: memoryview) -> None: ...

    def event(self, event: ChrEvent) -> None: ...

    async def run(self, chardev: SpiceChardev) -> None: ...
