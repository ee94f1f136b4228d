"""A harness that fails on purpose, for testing the runner (never run by default).

Any input of three or more bytes whose first byte is 0 fails: both engines find
one within a few hundred inputs, and the runner must report it, keep the input and
exit non-zero.
"""

from __future__ import annotations

MAX_LEN = 64


class SelfTestFailure(Exception):
    """The failure this harness is made to find."""


def fuzz_one(data: bytes) -> None:
    if len(data) >= 3 and data[0] == 0:
        raise SelfTestFailure(f"found the planted failure: {data!r}")


def seeds() -> dict[str, bytes]:
    return {"harmless": b"?!"}
