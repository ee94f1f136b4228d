"""LZ4 rules: when to compress, and the checked decompression."""

from __future__ import annotations

import os
import struct

import lz4.block
import pytest

from trivmc.protocol import (
    CompressionType,
    DecompressError,
    MsgVmc,
    VmcCompressedData,
    compress_body,
    decompress_block,
    decompress_body,
    should_compress,
    vmc_payload,
)

DATA = bytes(range(256)) * 8


def test_should_compress_rules() -> None:
    assert should_compress(True, 1001, False)
    assert not should_compress(True, 1000, False)  # strictly more than 1000
    assert not should_compress(False, 5000, False)  # peer lacks the cap
    assert not should_compress(True, 5000, True)  # unix socket


def test_compress_only_when_smaller() -> None:
    assert compress_body(os.urandom(2000)) is None
    body = compress_body(DATA)
    assert body is not None
    msg = VmcCompressedData.decode(body)
    assert (msg.compression, msg.uncompressed_size) == (CompressionType.LZ4, 2048)


def test_vmc_payload() -> None:
    mtype, body = vmc_payload(DATA, True, False)
    assert mtype == MsgVmc.COMPRESSED_DATA and decompress_body(body, 4096) == DATA
    assert vmc_payload(DATA, True, True) == (MsgVmc.DATA, DATA)
    assert vmc_payload(DATA, False, False) == (MsgVmc.DATA, DATA)
    small = b"a" * 1000
    assert vmc_payload(small, True, False)[0] == MsgVmc.DATA
    rnd = os.urandom(3000)
    assert vmc_payload(rnd, True, False) == (MsgVmc.DATA, rnd)


def _body(ctype: int, size: int, block: bytes) -> bytes:
    return struct.pack("<BI", ctype, size) + block


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00\x08",  # header cut short
        b"\x00" + DATA,  # type NONE is refused
        _body(2, 2048, lz4.block.compress(DATA, store_size=False)),  # unknown type
        _body(1, 0, b""),  # stated size 0
        _body(1, 4097, lz4.block.compress(DATA, store_size=False)),  # above the bound
        _body(1, 4096, lz4.block.compress(DATA, store_size=False)),  # stated too large
        _body(1, 2047, lz4.block.compress(DATA, store_size=False)),  # stated too small
        _body(1, 2048, b"\xff" * 40),  # garbage block
    ],
)
def test_decompress_refusals(body: bytes) -> None:
    with pytest.raises(DecompressError):
        decompress_body(body, 4096)


def test_python_lz4_trap_is_caught() -> None:
    block = lz4.block.compress(DATA, store_size=False)
    # python-lz4 itself returns the short result silently ...
    assert len(lz4.block.decompress(block, uncompressed_size=3000)) == 2048
    # ... the checked decompression does not
    with pytest.raises(DecompressError):
        decompress_block(block, 3000, 1 << 20)
    assert decompress_block(memoryview(block), 2048, 2048) == DATA
