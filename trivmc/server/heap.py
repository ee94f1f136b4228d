"""Giving freed memory back to the system: glibc's `malloc_trim`, on a timer.

Why it exists: socket reads are `bytes` objects of up to 256 KiB-1 MiB that CPython
hands to glibc's malloc. Once a large block has been freed, glibc raises its mmap
threshold, so later read buffers come from the heap; with a thousand sessions freeing
them in any order the heap fragments, and glibc keeps free pages it could return.
Measured in the soak (`nox -s soak`: 1000 port sessions, 60 s of faults, RSS at the end
of six rounds): without trimming, RSS crept 114, 118, 121, 122, 124, 126 MiB with
Python's own allocations flat; with a trim every 10 s it stayed at 107-113 MiB.
`malloc_trim` returns free pages from the middle of the heap too (madvise).

What it costs, on the event loop: about 0.5 ms when there is little to give back,
and about 0.1 ms per MiB given back (measured: 22 ms for 280 MiB of a fragmented
heap); trimming every few seconds keeps each call small. Where the C library has no
`malloc_trim` (musl, macOS), nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 2 * 1024 * 1024


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `size` (mallopt), so blocks that large always get
    their own mapping, given back to the system when freed.

    Why: glibc raises the threshold (up to 32 MiB) each time a mapped block is freed,
    after which large blocks (a 16 MiB message being assembled, say) come from the
    heap: growing one then copies it, and the freed space stays in RSS. Measured with
    the hostile row "16 MiB DATA, never reading" (peak RSS growth of the server, runs
    of the same build): 36-83 MiB with glibc's sliding threshold, 51-52 MiB pinned.
    Why 2 MiB and not glibc's 128 KiB start: blocks below it are the per-message
    traffic (a TLS batch joined for OpenSSL, a 1 MiB read when the shared receive
    buffers are all held); mapping and faulting each of those in cost spice-gtk's TLS
    echo a third of its speed (0.59 of spice-server pinned at 256 KiB, 1.18 at 2 MiB).
    Returns False where the C library has no mallopt (nothing is changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size))


def malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` as a function returning 1 when memory was released,
    or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def trim_periodically(interval: float) -> None:
    """Call `malloc_trim(0)` every `interval` seconds until cancelled (a no-op loop
    ends at once where there is none)."""
    trim = malloc_trim()
    if trim is None:
        log.debug("no malloc_trim in this C library: freed heap memory stays with it")
        return
    while True:
        await trio.sleep(interval)
        trim()
