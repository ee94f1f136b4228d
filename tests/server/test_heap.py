"""The heap setting a serving process applies (server/heap.py), in a fresh process:
with the mmap threshold pinned (2 MiB), a 3 MiB block gets its own mapping (given back when
freed) even after a 16 MiB block was freed; with glibc's sliding threshold that free
raises the threshold and the block comes from the heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CODE = """
import ctypes, ctypes.util, sys
from trivmc.server.heap import pin_mmap_threshold
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
b = b"x" * (16 << 20)
del b
before = libc.mallinfo2().hblkhd
blocks = [b"y" * (3 << 20) for _ in range(4)]
print((libc.mallinfo2().hblkhd - before) >> 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_pinned_threshold_maps_large_blocks() -> None:
    def mapped_kib(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert mapped_kib("pin") >= 4 * 3 * 1024  # each block its own mapping
    assert mapped_kib("sliding") == 0  # glibc's own rule: from the heap
