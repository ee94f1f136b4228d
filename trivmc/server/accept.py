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
import functools
import logging
import resource
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from .sockets import format_address

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
Listening = tuple[trio.socket.SocketType, object, bool]  # socket, address, TLS


class OnAcceptTls(Protocol):
    """A connection accepted on a plain (`secure` False) or TLS listener."""

    def __call__(self, sock: trio.socket.SocketType, addr: object, *, secure: bool) -> None: ...


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


class Acceptor:
    """The accept loops of a server's listeners, in the server's nursery: `stop()`
    ends them (a handover: the next process accepts on the same sockets, which stay
    open), `resume()` starts them again (the handover failed)."""

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._serving: tuple[trio.Nursery, Sequence[Listening], OnAcceptTls] | None = None

    def start(
        self, nursery: trio.Nursery, listeners: Sequence[Listening], on_accept: OnAcceptTls
    ) -> None:
        """Accept on every listener, in `nursery`, until `stop()` or cancellation."""
        self._serving = (nursery, listeners, on_accept)
        nursery.start_soon(self._run, self._scope)

    def stop(self) -> None:
        self._scope.cancel()

    def resume(self) -> None:
        """Accept again after `stop()`; nothing while accepting or before `start`."""
        if self._serving is None or not self._scope.cancel_called:
            return
        self._scope = trio.CancelScope()
        self._serving[0].start_soon(self._run, self._scope)
        log.warning("accepting connections again")

    async def _run(self, scope: trio.CancelScope) -> None:
        assert self._serving is not None
        _, listeners, on_accept = self._serving
        with scope:
            async with trio.open_nursery() as accepting:
                for sock, addr, secure in listeners:
                    name = format_address(addr) + (" (TLS)" if secure else "")
                    accepting.start_soon(
                        accept_loop, sock, functools.partial(on_accept, secure=secure), name
                    )
                    log.info("listening on %s", name)
