"""Connecting backends (tcp:, unix:): a peer opened for each SPICE client session.

Every client starts with a fresh peer (what QEMU's usb-redir and QMP expect): the
peer is opened once a client attaches and closed at its session boundary (see
peer_bridge.py); a peer opened for a client that has left is closed unused. Within a
session they reconnect with a bounded backoff (`reconnect=SECONDS` is the longest
wait; 0 disables).

A *standing* backend (one run under a usbredir channel's frontend) follows QEMU's
usb-redir the way spice-server + QEMU do: it keeps a connection to QEMU
while no client is attached (reconnecting with the backoff while QEMU is away), holds
what QEMU says first for the next client (early_words.py), and after each client's
session boundary closes that connection and opens a fresh one, so QEMU resets its
device between two sessions. The guest side is open (the channel is offered) while a
peer is connected and has spoken; a peer that goes away, or a reconnect that fails,
closes it (the channel is withdrawn and its client's channel closed). Closing the
peer at a session boundary does not close it: the fresh connection follows at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket

import trio

from .peer_bridge import DEFAULT_DRAIN, StreamBackend

# the stream backends' log lines keep the name they had before the split
log = logging.getLogger("trivmc.backends.stream")

FIRST_BACKOFF = 0.1
DEFAULT_RECONNECT = 2.0
STANDING_FIRST_BACKOFF = 0.01  # a standing backend's first reconnect delay


class ConnectingBackend(StreamBackend):
    """Opens a peer for each client session; reconnects with bounded backoff."""

    per_session = True

    def __init__(self, reconnect: float = DEFAULT_RECONNECT, drain: float = DEFAULT_DRAIN) -> None:
        super().__init__(drain)
        self.reconnect = reconnect
        self.connect_failures = 0

    async def open_peer(self) -> trio.abc.Stream:  # pragma: no cover - subclasses
        """Connect a new peer stream; OSError when it cannot (the caller backs off)."""
        raise NotImplementedError

    async def serve(self) -> None:
        """Open a peer per client session (or a standing one), reconnecting with backoff."""
        await self.bridge_adopted()  # a peer handed over by the previous process first
        if self.standing:
            await self._serve_standing()
            return
        backoff = FIRST_BACKOFF
        last_session = self.session
        while True:
            await self.wait_client(True)
            session = self.session
            if session != last_session:  # a new client: its first retry comes soon
                backoff, last_session = FIRST_BACKOFF, session
            try:
                stream = await self.open_peer()
            except OSError as e:
                self.connect_failures += 1
                if self.reconnect <= 0:
                    log.warning("%s: cannot connect (%s); no reconnect", self.name, e)
                    await self.wait_client(False)
                    continue
                log.warning("%s: cannot connect (%s); retrying in %.1f s", self.name, e, backoff)
                with trio.move_on_after(backoff):
                    await self.wait_client(False)
                backoff = min(backoff * 2, self.reconnect)
                continue
            backoff = FIRST_BACKOFF
            if self.session != session or not self.client_attached:
                await trio.aclose_forcefully(stream)  # opened for a client that has left
                continue
            log.info("%s: connected", self.name)
            await self.bridge(stream)
            if self.client_attached and self.reconnect > 0:
                with trio.move_on_after(backoff):
                    await self.wait_client(False)
            elif self.client_attached:
                await self.wait_client(False)

    async def _serve_standing(self) -> None:
        """Keep a peer connected whether or not a client is attached: a fresh one after
        every session boundary, and again after the peer went away. Attempts start
        STANDING_FIRST_BACKOFF apart and double up to `reconnect`, so QEMU coming back
        soon after it left (a device re-plugged) is found within about as long again."""
        assert self.chardev is not None
        backoff = STANDING_FIRST_BACKOFF
        cap = self.reconnect if self.reconnect > 0 else DEFAULT_RECONNECT
        reported = False
        while True:
            try:
                stream = await self.open_peer()
            except OSError as e:
                self.connect_failures += 1
                self.chardev.set_fe_open(False)  # not reachable: the channel is withdrawn
                level = logging.DEBUG if reported else logging.WARNING
                log.log(level, "%s: cannot connect (%s); retrying", self.name, e)
                reported = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cap)
                continue
            reported = False
            log.info("%s: connected", self.name)
            started = trio.current_time()
            await self.bridge(stream)
            if self.spoke or trio.current_time() - started >= 1.0:
                # a real session (QEMU said its hello), not a peer that keeps closing
                backoff = STANDING_FIRST_BACKOFF
            if not self.ended_at_boundary:  # the peer went away: not at once
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cap)


class TcpConnectBackend(ConnectingBackend):
    """Connects to `host:port` for each client session (QEMU's `socket,host=,port=`)."""

    def __init__(
        self,
        host: str,
        port: int,
        reconnect: float = DEFAULT_RECONNECT,
        drain: float = DEFAULT_DRAIN,
    ) -> None:
        super().__init__(reconnect, drain)
        self.host, self.port = host, port
        self.name = f"tcp:{host}:{port}"

    async def open_peer(self) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        return stream


class UnixConnectBackend(ConnectingBackend):
    """Connects to the unix socket `path` for each client session."""

    def __init__(
        self, path: str, reconnect: float = DEFAULT_RECONNECT, drain: float = DEFAULT_DRAIN
    ) -> None:
        super().__init__(reconnect, drain)
        self.path = path
        self.name = f"unix:{path}"

    async def open_peer(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(self.path)
