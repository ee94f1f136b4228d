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

    async def open_listener(self) -> trio.SocketListener:  # pragma: no cover
        raise NotImplementedError

    async def serve(self) -> None:
        listener = await self.open_listener()
        self.listening.set()
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    log.warning("%s: accept failed: %s", self.name, e)
                    await trio.sleep(ACCEPT_PAUSE)
                    continue
                log.info("%s: peer connected", self.name)
                await self.bridge(stream)


class TcpListenBackend(ListeningBackend):
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
