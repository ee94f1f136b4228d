"""Listening backends (tcp-listen:, unix-listen:): one persistent pipe that accepts one
peer at a time, for as long as it runs, across client sessions."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import trio

from .peer_bridge import StreamBackend

# the stream backends' log lines keep the name they had before the split
log = logging.getLogger("trivmc.backends.stream")

ACCEPT_PAUSE = 0.1  # after a failed accept


class ListeningBackend(StreamBackend):
    """Accepts one peer at a time (the next waits in the backlog). `listening` is set
    once peers can connect."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = trio.Event()  # one-shot: set once, never cleared
        # a handover: the previous process's listening socket, used instead of a new one
        self.adopted_listener: socket.socket | None = None
        self.listener: trio.SocketListener | None = None
        self._accept_scope: trio.CancelScope | None = None

    async def open_listener(self) -> trio.SocketListener:  # pragma: no cover
        """Bind and listen; OSError when it cannot."""
        raise NotImplementedError

    async def serve(self) -> None:
        """Listen (or adopt the handed-over listener), then accept and bridge one peer
        at a time until cancelled; the listener is closed on the way out."""
        if self.adopted_listener is not None:
            sock, self.adopted_listener = self.adopted_listener, None
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        else:
            listener = await self.open_listener()
        self.listener = listener
        self.listening.set()
        async with listener:
            await self.bridge_adopted()  # a peer handed over by the previous process
            while True:
                stream: trio.abc.Stream | None = None
                with trio.CancelScope() as self._accept_scope:
                    while not self.released and stream is None:
                        try:
                            stream = await listener.accept()
                        except OSError as e:
                            log.warning("%s: accept failed: %s", self.name, e)
                            await trio.sleep(ACCEPT_PAUSE)
                if stream is not None:
                    # (outside the accept scope: a peer accepted just as the listener
                    # was released is bridged, and goes with the handover)
                    log.info("%s: peer connected", self.name)
                    await self.bridge(stream, own=True)
                    continue
                # handed over: the next process accepts (this one again after `reclaim`)
                await self._released.wait_value(False)

    def release_listener(self) -> socket.socket | None:
        """For a handover: a duplicate of the listening socket (connections queue in
        its backlog until the next process accepts them); this backend accepts no
        more (`released`) until `reclaim()`. None before it listens."""
        if self.listener is None:
            return None
        self.released = True
        if self._accept_scope is not None and self.peer is None:
            self._accept_scope.cancel()  # (a bridged peer goes on until release_peer)
        sock = self.listener.socket
        return socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))


class TcpListenBackend(ListeningBackend):
    """Listens on `host:port` (`bound` is the address once listening)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.name = f"tcp-listen:{host}:{port}"
        self.bound: tuple[str, int] | None = None

    async def open_listener(self) -> trio.SocketListener:
        (listener,) = (await trio.open_tcp_listeners(self.port, host=self.host))[:1]
        self.bound = listener.socket.getsockname()[:2]
        return listener


class UnixListenBackend(ListeningBackend):
    """Listens on the unix socket `path` (an old file there is removed)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.name = f"unix-listen:{path}"

    async def open_listener(self) -> trio.SocketListener:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen(1)
        return trio.SocketListener(sock)
