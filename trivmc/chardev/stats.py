"""DeviceStats: the byte counters of one char device, counted where the data passes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DeviceStats:
    """Byte counters of one device; they only grow.

    The first six are spice-server's spicevmc counters, with its meanings (spicevmc.cpp,
    docs/chardev.md): a client's message counts once the device accepted it
    (`accepted`, called by the CharDevice), a device read once it is queued for the
    client (`pushed`). The others are the device's own: bytes through the instance,
    dropped ones, and those a migration moved out of or into the write queue
    (chardev/migration.py). Every client byte accepted ends in exactly one of written,
    dropped, migrated_out, or is still queued.
    """

    in_data: int = 0  # payload of DATA messages from clients
    in_compressed: int = 0  # LZ4 block bytes of COMPRESSED_DATA from clients
    in_decompressed: int = 0  # the bytes those decompressed to
    out_data: int = 0  # device bytes sent to clients as DATA
    out_compressed: int = 0  # LZ4 block bytes of COMPRESSED_DATA sent to clients
    out_uncompressed: int = 0  # device bytes sent to clients as COMPRESSED_DATA
    written: int = 0  # bytes written into the device instance
    read: int = 0  # bytes read from the device instance (for a client)
    dropped: int = 0  # client bytes never written: by reset() (a session boundary) or a stop
    migrated_out: int = 0  # client bytes handed to a migration target instead (a source)
    migrated_in: int = 0  # bytes a migration source handed over, queued here (a target)

    def accepted(self, size: int, compressed_size: int | None) -> None:
        """The device accepted a client's message: a DATA payload of `size` bytes, or,
        with `compressed_size` (its LZ4 block's size, without COMPRESSED_DATA's head),
        a COMPRESSED_DATA that decompressed to `size` bytes."""
        if compressed_size is None:
            self.in_data += size
        else:
            self.in_compressed += compressed_size
            self.in_decompressed += size

    def pushed(self, size: int, compressed_size: int | None) -> None:
        """`size` bytes read from the instance were queued for the client: as DATA, or,
        with `compressed_size` (the LZ4 block's size), as COMPRESSED_DATA."""
        self.read += size
        if compressed_size is None:
            self.out_data += size
        else:
            self.out_uncompressed += size
            self.out_compressed += compressed_size
