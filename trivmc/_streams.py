"""Small pieces of trio's stream contract that trivmc's own streams share: the
`BusyResourceError` on concurrent use and the check of `receive_some`'s argument."""

from __future__ import annotations

import operator
from types import TracebackType

import trio


class ConflictDetector:
    """`with detector:` around a stream method: a second task entering while one is
    inside raises `trio.BusyResourceError` at once instead of waiting."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    @property
    def held(self) -> bool:
        """A task is inside."""
        return self._held

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False


def check_max_bytes(max_bytes: int | None) -> int | None:
    """`receive_some`'s argument as trio's contract wants it: None, or an int >= 1
    (TypeError for a non-integer, ValueError for 0 or less, which would otherwise read
    as end of stream)."""
    if max_bytes is None:
        return None
    n = operator.index(max_bytes)
    if n < 1:
        raise ValueError("max_bytes must be >= 1")
    return n
