"""A char device's part in a seamless migration (spice-server's char-device.cpp
`migrate_data_marshall` and `restore`): the write queue leaves the source and is put
back on the target, in order.

- Source: `take_pending_writes()` removes every byte accepted and not yet written (the
  rest of the buffer being written, then the queue, in order), returns its tokens and
  counts the bytes in `stats.migrated_out`: from then on they are the target's to
  write, never the source's.
- Target: `restore_pending_writes(data)` puts those bytes at the head of an empty write
  queue, as one buffer under one token (spice-server's single restored buffer), counted
  in `stats.migrated_in` (not as a client message) and in the byte budget; the device
  writes them before anything a client sends later.

Both are synchronous: no write can slip in between taking the queue and sending it.
"""

from __future__ import annotations

from .buffer import WriteBuffer
from .device import CharDevice


class MigratableCharDevice(CharDevice):
    """A CharDevice whose write queue can be handed from a migration source to its
    target (the VMC channels' device)."""

    def take_pending_writes(self) -> bytes:
        """Remove and return the bytes accepted and not yet written, in order; the
        device is then empty (`buffered_bytes` 0, every queued buffer's token back)."""
        queue = self._queue
        data = b"".join([buf.data for buf in queue])
        assert len(data) == self._buffered, (len(data), self._buffered)
        while queue:
            queue.popleft().release()
        self._queue_empty.value = True
        self._written(len(data))
        self._stalled.value = False
        self.stats.migrated_out += len(data)
        return data

    def restore_pending_writes(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a migration source's pending bytes ahead of everything else: written
        now when the device runs (what the instance does not take waits, under one
        token, as a partial write does). RuntimeError unless the queue is empty and a
        token is free (a target takes MIGRATE_DATA before any DATA, so both hold)."""
        if not data:
            return
        if self._queue:
            raise RuntimeError("migration data restored into a device with queued writes")
        if not self._tokens.value:
            raise RuntimeError("migration data restored with no write token free")
        self.stats.migrated_in += len(data)
        self._tokens.acquire_nowait()
        buf = WriteBuffer(b"", self._release)
        view = memoryview(data)
        if self._running.value:
            self._write_now(view, buf)
        else:
            self._enqueue(buf, view)
