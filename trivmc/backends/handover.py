"""What a stream backend hands to the next process in a handover (docs/handover.md).

A `PeerHandover` is a bridged peer's connected socket, taken out of trio without
closing it (so the peer, QEMU's usb-redir chardev for one, never sees a disconnect),
with the bytes that were in flight at the moment of the release: those taken for the
peer and not yet sent (`unsent`, they go to the peer first), and, for a standing peer
without its client yet, what it said for that client (`early`).

An `Adoption` is the other side: a backend built in the next process waits on it
before it opens any peer of its own, and bridges the handed-over peer when it comes
(or, told that none will, goes on as usual).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import trio


@dataclass
class PeerHandover:
    """A peer socket between two processes, with the bytes in flight.

    Guarantee: `sock` is open and owned by whoever holds this; `unsent` and `early`
    are each in order and were never delivered (neither to the peer nor to a client).
    """

    sock: socket.socket
    unsent: bytes = b""  # for the peer, before anything else
    early: bytes = b""  # a standing peer's first words, for its first client
    had_client: bool = False  # the peer served the session that moves with it
    spoke: bool = False  # the peer has said something (QEMU's hello)

    def close(self) -> None:
        self.sock.close()


class Adoption:
    """A handed-over peer a backend waits for before it opens its own.

    Set once (`give`): with a `PeerHandover`, or None when the old process has none
    for this backend. `take()` returns it once; later calls return None."""

    def __init__(self) -> None:
        self._given = trio.Event()
        self._peer: PeerHandover | None = None

    def give(self, peer: PeerHandover | None) -> None:
        if self._given.is_set():
            if peer is not None:
                peer.close()  # (a second peer for the same backend: not taken)
            return
        self._peer = peer
        self._given.set()

    @property
    def given(self) -> bool:
        return self._given.is_set()

    async def take(self) -> PeerHandover | None:
        await self._given.wait()
        peer, self._peer = self._peer, None
        return peer


def detach_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The socket under a trio `SocketStream`, taken out of it without closing the
    connection (the stream is closed, the connection stays open); None for any other
    stream (a pipe to a process cannot move)."""
    sock = getattr(stream, "socket", None)
    if not isinstance(sock, trio.socket.SocketType):
        return None
    family, kind = sock.family, sock.type
    fd = sock.detach()
    return socket.socket(family, kind, fileno=fd)
