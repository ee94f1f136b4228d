"""LZ4 harness: `decompress_body` / `decompress_block` on arbitrary and on mutated valid
COMPRESSED_DATA bodies with a bound, and `compress_body` -> `decompress_body` round trips.

Input: u8 target, the bound and sizes, then the body (or the data to compress).
python-lz4 allocates the stated size before it decompresses, so the harness watches
every call trivmc makes to `lz4.block.decompress` (the module `lz4rules` uses is
swapped for a spy during each input). Asserted:

- only `DecompressError` comes out;
- a stated size of 0 or above the bound, a type other than LZ4 or a body shorter than
  its 5-byte header is refused without calling the decompressor; when it is called,
  its allocation (the stated size) is within the bound;
- on success the output is exactly the stated size;
- `compress_body(data)` is None exactly when the LZ4 block is not smaller than `data`;
  otherwise it decompresses to `data` under the bound `len(data)` and is refused under
  `len(data) - 1`; `vmc_payload` follows `should_compress` and `compress_body`.
"""

from __future__ import annotations

import struct
import types
from collections.abc import Callable
from typing import Any

import lz4.block

from trivmc.protocol import (
    CompressionType,
    DecompressError,
    MsgVmc,
    compress_body,
    decompress_block,
    decompress_body,
    lz4rules,
    should_compress,
    vmc_payload,
)

from .fuzzdata import FuzzInput, FuzzOutput

MAX_LEN = 8192

BODY, BLOCK, ROUND_TRIP, MUTATED = range(4)
MAX_BOUND = (1 << 24) - 1  # the largest 3-byte bound (the server's VMC bound is 16 MiB)
HEAD = struct.Struct("<BI")


class _Spy:
    """Stands in for the `lz4` module inside `lz4rules`: records each decompression."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.bound = 0
        real = lz4.block
        self.block = types.SimpleNamespace(
            compress=real.compress, LZ4BlockError=real.LZ4BlockError, decompress=self._decompress
        )

    def _decompress(self, block: Any, uncompressed_size: int) -> bytes:
        self.calls.append(uncompressed_size)
        assert 0 < uncompressed_size <= self.bound, (uncompressed_size, self.bound)
        out: bytes = lz4.block.decompress(block, uncompressed_size=uncompressed_size)
        return out


_spy = _Spy()


def _watched(call: Callable[[], bytes], bound: int) -> tuple[bytes | None, list[int]]:
    """(output or None for DecompressError, sizes the decompressor was asked for)."""
    _spy.calls.clear()
    _spy.bound = bound
    namespace = vars(lz4rules)  # its `lz4` module is swapped for the spy meanwhile
    saved = namespace["lz4"]
    namespace["lz4"] = _spy
    try:
        try:
            out: bytes | None = call()
        except DecompressError:
            out = None
    finally:
        namespace["lz4"] = saved
    return out, list(_spy.calls)


def fuzz_one(data: bytes) -> None:
    inp = FuzzInput(data)
    target = inp.u8() % 4
    if target == BODY:
        bound = inp.uint(3)
        _check_body(inp.rest(), bound)
    elif target == BLOCK:
        size = inp.u32()
        bound = inp.uint(3)
        block = inp.rest()
        out, calls = _watched(lambda: decompress_block(block, size, bound), bound)
        if not 0 < size <= bound:
            assert out is None and not calls, "a size outside 1..bound reached the decompressor"
        if out is not None:
            assert len(out) == size and calls == [size]
    elif target == ROUND_TRIP:
        repeat = inp.u8() % 64 + 1
        flags = inp.u8()
        _round_trip(inp.rest() * repeat, bool(flags & 1), bool(flags & 2))
    else:
        _mutated(inp)


def _check_body(body: bytes, bound: int) -> None:
    out, calls = _watched(lambda: decompress_body(body, bound), bound)
    refused_early = len(body) < HEAD.size or body[0] != CompressionType.LZ4
    if not refused_early:
        _, stated = HEAD.unpack_from(body)
        refused_early = not 0 < stated <= bound
    if refused_early:
        assert out is None and not calls, "a bad header reached the decompressor"
    if out is not None:
        _, stated = HEAD.unpack_from(body)
        assert len(out) == stated and calls == [stated], (len(out), stated, calls)


def _round_trip(data: bytes, peer_lz4: bool, is_unix: bool) -> None:
    body = compress_body(data)
    smaller = len(lz4.block.compress(data, store_size=False)) < len(data)
    assert (body is not None) == smaller
    if body is not None:
        assert HEAD.unpack_from(body) == (CompressionType.LZ4, len(data))
        back, calls = _watched(lambda: decompress_body(body, len(data)), len(data))
        assert back == data and calls == [len(data)]
        refused, calls = _watched(lambda: decompress_body(body, len(data) - 1), len(data) - 1)
        assert refused is None and not calls
    mtype, payload = vmc_payload(data, peer_lz4, is_unix)
    if should_compress(peer_lz4, len(data), is_unix) and body is not None:
        assert (mtype, payload) == (MsgVmc.COMPRESSED_DATA, body)
    else:
        assert mtype == MsgVmc.DATA and payload is data


def _mutated(inp: FuzzInput) -> None:
    """A valid body of compressible data, then byte edits: near-valid LZ4 blocks."""
    bound = inp.uint(3)
    edits = [(inp.u16(), inp.u8()) for _ in range(inp.u8() % 8)]
    repeat = inp.u8() % 64 + 1
    body = compress_body(inp.rest() * repeat)
    if body is None:
        return
    buf = bytearray(body)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    _check_body(bytes(buf), bound)


# ---- seeds -------------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    text = b"hello from spice-gtk, " * 60
    pattern = bytes(range(256)) * 8  # the spec's COMPRESSED_DATA example
    out: dict[str, bytes] = {}
    for name, data in (("text", text), ("pattern", pattern), ("zeros", bytes(3000))):
        body = compress_body(data)
        assert body is not None
        out[f"body-{name}"] = FuzzOutput().u8(BODY).uint(len(data), 3).raw(body).bytes()
        out[f"body-{name}-bound-short"] = (
            FuzzOutput().u8(BODY).uint(len(data) - 1, 3).raw(body).bytes()
        )
        out[f"block-{name}"] = (
            FuzzOutput().u8(BLOCK).u32(len(data)).uint(MAX_BOUND, 3).raw(body[5:]).bytes()
        )
    out["body-stated-too-large"] = (
        FuzzOutput().u8(BODY).uint(MAX_BOUND, 3).raw(HEAD.pack(1, MAX_BOUND + 1) + b"\0").bytes()
    )
    out["body-not-lz4"] = FuzzOutput().u8(BODY).uint(100, 3).raw(b"\x00raw data").bytes()
    out["round-trip-text"] = FuzzOutput().u8(ROUND_TRIP).u8(59).u8(1).raw(text[:22]).bytes()
    out["round-trip-short"] = FuzzOutput().u8(ROUND_TRIP).u8(0).u8(3).raw(b"abc").bytes()
    out["mutated-pattern"] = (
        (FuzzOutput().u8(MUTATED).uint(4096, 3).u8(2).u16(7).u8(0xFF).u16(20).u8(0).u8(7))
        .raw(bytes(range(256)))
        .bytes()
    )
    return out
