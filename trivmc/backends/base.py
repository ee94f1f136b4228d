"""The Backend shape: a CharBackend that may also run a task for the device's life."""

from __future__ import annotations

from typing import Protocol

from ..chardev import ChrEvent, SpiceChardev


class Backend(Protocol):
    """A chardev backend. `run()` is started once per device in the server's nursery and
    runs until cancelled; it must never raise for a peer's failure (log and go on)."""

    def can_read(self) -> int:
        """How many bytes `read` may be given now; 0 means stalled."""

    def read(self, data: memoryview) -> None:
        """Take all of `data` (at most what `can_read` allowed); valid during the call only."""

    def event(self, event: ChrEvent) -> None:
        """OPENED, CLOSED or BREAK from the client side (`ChrEvent`)."""

    async def run(self, chardev: SpiceChardev) -> None:
        """Serve `chardev` until cancelled; tasks it starts live in nurseries it opens
        itself, so all of them end before it returns."""
