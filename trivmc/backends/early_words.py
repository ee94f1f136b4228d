"""A standing peer's first words: what it says before its first client attaches.

QEMU's usb-redir sends its usbredir hello as soon as its device exists, whether or not
a SPICE client is attached. A standing backend (connecting.py) keeps those bytes, at most
EARLY_LIMIT of them plus one read, and hands them to the first client of that peer
before anything else the peer says; a peer that goes away takes them with it.
"""

from __future__ import annotations

from ..chardev import SpiceChardev

EARLY_LIMIT = 64 * 1024  # what a standing peer may say before a client attaches


class EarlyWords:
    """The bytes a standing peer said before its first client attached."""

    def __init__(self) -> None:
        self._data = bytearray()

    def keep(self, data: bytes | bytearray) -> bool:
        """Keep `data`; True once EARLY_LIMIT bytes are kept (then the peer is not read
        on until a client took them)."""
        self._data += data
        return len(self._data) >= EARLY_LIMIT

    def hand_over(self, chardev: SpiceChardev) -> None:
        """The peer's first client attached: what the peer said goes to it first. It
        all fits: at most EARLY_LIMIT + one read (128 KiB), and the chardev's pending
        data (limit 256 KiB) was cleared when the last client left."""
        if self._data:
            early, self._data = self._data, bytearray()
            taken = chardev.chr_write(early)
            assert taken == len(early), "the early words fit the chardev's pending room"

    @property
    def data(self) -> bytes:
        """What is kept (for a handover: the next process keeps it in turn)."""
        return bytes(self._data)

    def clear(self) -> None:
        """Forget them (a new peer, or the peer is gone)."""
        self._data = bytearray()
