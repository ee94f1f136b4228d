"""LZ4 rules of the spicevmc channels (spice-server spicevmc.cpp, spice-gtk).

Send: compress only when the peer advertised DATA_COMPRESS_LZ4, the transport is not a
unix socket, the payload is over 1000 bytes, and the LZ4 block is strictly smaller.
Receive: type must be LZ4, the stated size is bounded before allocating, and the output
must be exactly the stated size.
"""

from __future__ import annotations

import struct

import lz4.block

from .constants import LZ4_THRESHOLD, CompressionType, MsgVmc
from .errors import DecompressError
from .messages import Body

_HEAD = struct.Struct("<BI")
COMPRESSED_HEAD_SIZE = _HEAD.size  #: type and uncompressed size before the LZ4 block


def should_compress(peer_lz4: bool, size: int, is_unix: bool) -> bool:
    """Whether a payload of `size` bytes is a candidate for LZ4 (before trying)."""
    return peer_lz4 and not is_unix and size > LZ4_THRESHOLD


def compress_body(data: Body) -> bytes | None:
    """The COMPRESSED_DATA body for `data`, or None when LZ4 does not make it smaller."""
    block: bytes = lz4.block.compress(data, store_size=False)
    if len(block) >= len(data):
        return None
    return _HEAD.pack(CompressionType.LZ4, len(data)) + block


def vmc_payload(data: Body, peer_lz4: bool, is_unix: bool) -> tuple[MsgVmc, Body]:
    """The message for a payload going to the peer: `(COMPRESSED_DATA, body)` when the
    rules allow and LZ4 helps, else `(DATA, data)` (`data` itself, not copied)."""
    if should_compress(peer_lz4, len(data), is_unix):
        body = compress_body(data)
        if body is not None:
            return MsgVmc.COMPRESSED_DATA, body
    return MsgVmc.DATA, data


def decompress_body(body: Body, max_size: int) -> bytes:
    """Decompress a COMPRESSED_DATA body; raise `DecompressError` unless it holds an LZ4
    block that decompresses to exactly its stated size, which must be in 1..max_size."""
    if len(body) < 1:
        raise DecompressError("empty COMPRESSED_DATA body")
    if body[0] != CompressionType.LZ4:
        raise DecompressError(f"invalid compression type {body[0]}")
    if len(body) < _HEAD.size:
        raise DecompressError("COMPRESSED_DATA body shorter than its header")
    _, size = _HEAD.unpack_from(body, 0)
    block = body[_HEAD.size :] if isinstance(body, memoryview) else memoryview(body)[_HEAD.size :]
    return decompress_block(block, size, max_size)


def decompress_block(block: Body, size: int, max_size: int) -> bytes:
    """Decompress one LZ4 block that must yield exactly `size` bytes (1..max_size)."""
    if size <= 0 or size > max_size:
        raise DecompressError(f"stated uncompressed size {size} outside 1..{max_size}")
    try:
        out: bytes = lz4.block.decompress(block, uncompressed_size=size)
    except (lz4.block.LZ4BlockError, ValueError, MemoryError) as e:
        raise DecompressError(f"LZ4 decompression failed: {e}") from e
    if len(out) != size:
        raise DecompressError(f"LZ4 block gave {len(out)} bytes, stated {size}")
    return out
