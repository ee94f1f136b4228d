"""A pool of RSA link keys made ahead of time, so that no link waits for key generation."""

from __future__ import annotations

from collections import deque

from ..protocol import LinkKey, generate_key


class KeyPool:
    """Keys generated ahead of time so no link waits for key generation.

    Each key is handed out once (`take`), never reused. Keys come in through `add`
    (trivmc's server makes them in worker processes, off its event loop's CPU and
    GIL) or `refill()` (generates here, blocking). `take`, `add` and `refill` may run
    in different threads: the pool is a deque whose append/popleft are atomic.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._keys: deque[LinkKey] = deque()

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def wanted(self) -> int:
        """How many keys would fill the pool."""
        return max(0, self.size - len(self._keys))

    def add(self, key: LinkKey) -> None:
        self._keys.append(key)

    def take(self) -> LinkKey:
        """A never-used key: from the pool, or generated now when the pool is empty."""
        try:
            return self._keys.popleft()
        except IndexError:
            return generate_key()

    def refill(self, n: int | None = None) -> int:
        """Generate keys until the pool holds `size` (or at most `n` more, when given);
        return how many were added. Blocking: call it off the link path."""
        added = 0
        while len(self._keys) < self.size and (n is None or added < n):
            key = generate_key()
            key.warm()
            self._keys.append(key)
            added += 1
        return added
