"""Accepting connections: a loop that only a failing listener ends, and the fd budget.

trio's `serve_listeners` hands each handler a `SocketStream`, whose construction and
peer name can fail for a peer that already reset (ENOTCONN): outside any handler, such
a failure would end the whole server. Here the loop only accepts and hands the raw
socket and the peer address that `accept()` returned to `on_accept`; the handler builds
everything else inside its own error containment.

- Errors that belong to one connection (it reset or aborted before accept) are skipped.
- Running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged once
  and retried with a growing pause (up to 1 s) instead of spinning; the next successful
  accept logs that accepting resumed.
- Any other error is the listener's own failure and is raised: it ends `serve`.
"""

from __future__ import annotations

import errno
import logging
import resource
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

# the connection was gone before accept returned it (accept(2): "should be treated like
# EAGAIN"), or a network error that concerns that one connection only
CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.EPERM,  # a firewall rule forbade this connection
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EINTR,
    }
)
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0

OnAccept = Callable[[trio.socket.SocketType, object], None]


async def accept_loop(listener: trio.socket.SocketType, on_accept: OnAccept, name: str) -> None:
    """Accept on `listener` until cancelled, calling `on_accept(sock, peer_address)`
    for each connection (it must not block); raise only for the listener's failure."""
    pause = 0.0
    while True:
        try:
            sock, addr = await listener.accept()
        except OSError as e:
            if e.errno in CONNECTION_ERRNOS:
                continue
            if e.errno not in CAPACITY_ERRNOS:
                raise
            if not pause:
                log.error(
                    "%s: cannot accept (%s): backing off until descriptors or memory free up",
                    name,
                    e.strerror or e,
                )
            pause = min(MAX_PAUSE, max(FIRST_PAUSE, 2 * pause))
            await trio.sleep(pause)
            continue
        if pause:
            log.warning("%s: accepting connections again", name)
            pause = 0.0
        on_accept(sock, addr)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection costs a
    descriptor, a linked channel with a socket backend two); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.info("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft
