"""How a connection's end is logged: one line, a bad or vanished peer at warning or
info level, a bug with its traceback."""

from __future__ import annotations

import logging

import trio

from .._groups import leaf_exceptions
from ..protocol import ProtocolError
from .channel import PeerNotReading, PeerUnresponsive

log = logging.getLogger("trivmc.server.server")


def log_connection_error(peer: str, exc: BaseException) -> None:
    """Log, in one line, why a connection ended: a bad or vanished peer at warning or
    info level, a bug with its traceback. Exception groups are looked through."""
    leaves = leaf_exceptions(exc)
    bugs = [
        leaf
        for leaf in leaves
        if not isinstance(
            leaf, ProtocolError | trio.BrokenResourceError | trio.ClosedResourceError | OSError
        )
    ]
    if bugs:
        log.error("%s: internal error, closing this connection", peer, exc_info=bugs[0])
        return
    leaf = leaves[0]
    if isinstance(leaf, PeerNotReading | PeerUnresponsive):
        log.warning("%s: %s", peer, leaf)
    elif isinstance(leaf, ProtocolError):
        log.warning("%s: protocol error, closing this connection: %s", peer, leaf)
    elif isinstance(leaf, trio.BrokenResourceError | trio.ClosedResourceError):
        log.info("%s: connection lost: %s", peer, leaf.__cause__ or leaf)
    else:
        log.info("%s: socket error: %s", peer, leaf)
