"""Connections that have not linked yet: bounded per source address and in total.

A connection is *pending* from accept until its link succeeds (or it ends). Pending
connections cost a task, a socket and a little buffer each, and a peer can open them
for free, so they are bounded:

- per source address (`max_per_source`): a new connection from a source that already
  has that many pending is refused at once (closed before anything is read);
- in total (`max_total`): a new connection makes room by dropping the *oldest* pending
  one. A real client links within milliseconds, so it is never the oldest for long:
  whoever holds connections half-open cannot lock it out.

IPv6 sources are counted per /64 (one host usually owns a whole /64); IPv4-mapped
IPv6 addresses count as their IPv4 address; unix-socket peers are counted only in the
total. Refusals and drops are logged at most once a second (with a count), so a flood
cannot flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

LOG_EVERY = 1.0  # seconds between two log lines about refused or dropped connections


@dataclass(eq=False)
class PendingLink:
    """One pending connection: cancel `scope` to drop it."""

    source: str | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    evicted: bool = False


def source_key(family: int, addr: object) -> str | None:
    """What a connection is counted under: its IPv4 address, its IPv6 /64, or None
    (unix socket)."""
    if not isinstance(addr, tuple) or not addr:
        return None
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except ValueError:
        return str(addr[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Throttled:
    """A log line at most every LOG_EVERY seconds, saying how many were held back."""

    def __init__(self) -> None:
        self._last = -LOG_EVERY
        self._held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < LOG_EVERY:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        if held:
            log.warning(msg + " (and %d more like it)", *args, held)
        else:
            log.warning(msg, *args)


class PendingLinks:
    """The pending connections, oldest first, with their per-source counts.

    Guarantee: at most `max_per_source` pending per source and `max_total` in all;
    `done()` is idempotent and every admitted link must reach it.
    """

    def __init__(self, max_total: int, max_per_source: int) -> None:
        if max_total < 1 or max_per_source < 1:
            raise ValueError("pending link bounds must be at least 1")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.refused = 0  # connections refused for their source's bound
        self.evicted = 0  # pending connections dropped to make room
        self._links: dict[PendingLink, None] = {}  # insertion order: oldest first
        self._per_source: Counter[str] = Counter()
        self._refused_log = _Throttled()
        self._evicted_log = _Throttled()

    def __len__(self) -> int:
        return len(self._links)

    def from_source(self, source: str) -> int:
        return self._per_source[source]

    def admit(self, source: str | None) -> PendingLink | None:
        """A slot for a new connection from `source`, or None (logged) when that source
        has `max_per_source` pending. At `max_total`, the oldest is dropped first."""
        if source is not None and self._per_source[source] >= self.max_per_source:
            self.refused += 1
            self._refused_log.warning(
                "%s: connection refused: %d connections from this address are still"
                " linking (max_pending_per_source)",
                source,
                self._per_source[source],
            )
            return None
        while len(self._links) >= self.max_total:
            oldest = next(iter(self._links))
            self.done(oldest)
            oldest.evicted = True
            oldest.scope.cancel()
            self.evicted += 1
            self._evicted_log.warning(
                "%d connections are linking (max_pending_links): dropped the oldest (from %s)",
                self.max_total,
                oldest.source or "a unix socket",
            )
        link = PendingLink(source)
        self._links[link] = None
        if source is not None:
            self._per_source[source] += 1
        return link

    def done(self, link: PendingLink) -> None:
        """The link finished, failed or was dropped: it no longer counts."""
        if link in self._links:
            del self._links[link]
            if link.source is not None:
                self._per_source[link.source] -= 1
                if not self._per_source[link.source]:
                    del self._per_source[link.source]
