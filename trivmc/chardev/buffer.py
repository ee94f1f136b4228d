"""WriteBuffer: client data on its way to the device, holding one self token."""

from __future__ import annotations

from collections.abc import Callable


class WriteBuffer:
    """Bytes accepted from a client, owned by exactly one place at a time: the channel
    client filling it, then the device's write queue.

    `compressed_size`: set for a COMPRESSED_DATA's buffer (its LZ4 block's size, for
    the device's stats); None for DATA. `release()` returns the token; it is
    idempotent, so every exit path may call it.
    """

    __slots__ = ("_on_release", "compressed_size", "data", "released")

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        on_release: Callable[[], None],
        compressed_size: int | None = None,
    ) -> None:
        self.data = data
        self.compressed_size = compressed_size
        self.released = False
        self._on_release = on_release

    def __len__(self) -> int:
        return len(self.data)

    def release(self) -> None:
        """Drop the data and return the token (once)."""
        if not self.released:
            self.released = True
            self.data = b""
            self._on_release()
