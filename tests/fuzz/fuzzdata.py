"""The fuzzer's bytes read as structured values, and the writer that builds seed inputs.

`FuzzInput` never fails: past the end every number reads as 0 and every byte string as
empty, so any byte string is a valid input. `FuzzOutput` writes the same layout, for
the seed corpus (`python -m tests.fuzz.make_corpus`).
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_CUTS = 7


class FuzzInput:
    """Reads little-endian numbers and byte strings from the fuzzer's input."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def flag(self) -> bool:
        return bool(self.u8() & 1)

    def pick(self, options: Sequence[int]) -> int:
        return options[self.u8() % len(options)]

    def blob(self) -> bytes:
        """A u16 length and that many bytes (fewer at the end of the input)."""
        return self.take(self.u16())

    def cuts(self) -> list[int]:
        """Chunk sizes (1..256, used in turn) for cutting a byte stream; [] = whole."""
        count = self.u8() % (MAX_CUTS + 1)
        return [self.u8() + 1 for _ in range(count)]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


class FuzzOutput:
    """Writes what `FuzzInput` reads: builds seed inputs."""

    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, value: int, n: int) -> FuzzOutput:
        self.out += value.to_bytes(n, "little")
        return self

    def u8(self, value: int) -> FuzzOutput:
        return self.uint(value, 1)

    def u16(self, value: int) -> FuzzOutput:
        return self.uint(value, 2)

    def u32(self, value: int) -> FuzzOutput:
        return self.uint(value, 4)

    def raw(self, data: bytes) -> FuzzOutput:
        self.out += data
        return self

    def blob(self, data: bytes) -> FuzzOutput:
        return self.u16(len(data)).raw(data)

    def cuts(self, sizes: Sequence[int]) -> FuzzOutput:
        assert len(sizes) <= MAX_CUTS and all(1 <= s <= 256 for s in sizes)
        self.u8(len(sizes))
        for s in sizes:
            self.u8(s - 1)
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


def split(data: bytes, sizes: Sequence[int], max_pieces: int | None = None) -> list[bytes]:
    """`data` cut into pieces of `sizes` (cycled); [] cuts nothing. Never empty pieces.
    With `max_pieces`, the last piece takes whatever is left past that many (each piece
    costs the trio harnesses a few scheduler ticks)."""
    if not sizes:
        return [data] if data else []
    out: list[bytes] = []
    i = k = 0
    while i < len(data):
        if max_pieces is not None and len(out) == max_pieces - 1:
            out.append(data[i:])
            break
        step = sizes[k % len(sizes)]
        out.append(data[i : i + step])
        i += step
        k += 1
    return out
