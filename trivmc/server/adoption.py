"""The new process's side of a handover (docs/handover.md; the old side is
handover.py): wait at a private unix socket for the running server, take its listening
sockets, sessions and backend peers, and serve them as its own.

`await_handover(path, server)` returns the listening sockets once the old server's
`hello` came (serve them with `Server.serve(inherited=...)`) and a `Receiver` whose
`run()` takes the peers as they come and answers `ready` / `bye`. Only a process of
the same user may hand over (SO_PEERCRED), and every size it announces is bounded
before anything is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import trio

from ..backends.early_words import EARLY_LIMIT
from ..backends.handover import Adoption, PeerHandover
from ..backends.listening import ListeningBackend
from ..backends.peer_bridge import OUT_LIMIT, RECEIVE_SIZE, StreamBackend
from ..transport import fdpass

if TYPE_CHECKING:
    from .server import Server
    from .vmc import VmcChannel

log = logging.getLogger(__name__)

MAX_UNSENT = OUT_LIMIT + RECEIVE_SIZE  # a backend's bytes for its peer, with one in flight
MAX_EARLY = EARLY_LIMIT + RECEIVE_SIZE


class HandoverRefused(Exception):
    """The handover could not be taken (the reason is the text)."""


class Receiver:
    """Takes the old server's peers for `server`, in the order sent, until `done`."""

    def __init__(self, server: Server, fd: fdpass.FdChannel) -> None:
        self.server = server
        self.fd = fd
        self.adoptions: dict[tuple[int, int], Adoption] = {}
        self.peers = 0
        self.adopted_bytes = 0  # unsent + queued bytes taken over
        self.done = trio.Event()

    def _channel(self, key: Any) -> VmcChannel | None:
        if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, int) for k in key)):
            raise fdpass.HandoverProtocolError(f"a channel key is [type, id], not {key!r}")
        return self.server.channels.get((key[0], key[1]))

    def plan(self, msg: dict[str, Any], backend_listeners: list[socket.socket]) -> None:
        """The `hello`'s sessions and channel plan: expect the sessions, make the
        backends that get a peer wait for it, keep the guest side open where it was."""
        for cid in msg.get("sessions", []):
            if isinstance(cid, int) and 0 < cid < 1 << 32:
                self.server.expect_migration(cid)
        listeners = iter(backend_listeners)
        for entry in msg.get("channels", []):
            channel = self._channel(entry.get("key"))
            sock = next(listeners) if entry.get("listener") else None
            backend = channel.backend if channel is not None else None
            if channel is None or not isinstance(backend, StreamBackend):
                if sock is not None:
                    sock.close()
                log.warning("handover: channel %s is not here as a stream backend", entry)
                continue
            if sock is not None and isinstance(backend, ListeningBackend):
                backend.adopted_listener = sock
            elif sock is not None:
                sock.close()
            if entry.get("peer"):
                adoption = Adoption()
                backend.adoption = adoption
                self.adoptions[channel.key] = adoption
            if entry.get("fe-open"):
                channel.chardev.set_fe_open(True)  # offered as it was, before its peer

    async def run(self) -> None:
        """Take peers until `done`; then every backend still waiting goes on alone."""
        try:
            await self.fd.send({"t": "ready"})
            while True:
                msg, socks = await self.fd.receive()
                if msg.get("t") == "done":
                    break
                if msg.get("t") != "peer":
                    for s in socks:
                        s.close()
                    raise fdpass.HandoverProtocolError(f"unexpected {msg.get('t')!r}")
                await self._peer(msg, socks)
            await self.fd.send({"t": "bye"})
        except (EOFError, OSError, fdpass.HandoverProtocolError) as e:
            log.warning("handover: ended early: %s", e)
        finally:
            for adoption in self.adoptions.values():
                adoption.give(None)  # (a peer that never came: the backend goes on)
            self.fd.close()
            self.done.set()
            log.info(
                "handover: %d peers taken, %d bytes in flight", self.peers, self.adopted_bytes
            )

    async def _peer(self, msg: dict[str, Any], socks: list[socket.socket]) -> None:
        if len(socks) > 1:
            for s in socks:
                s.close()
            raise fdpass.HandoverProtocolError("a peer message with several sockets")
        channel = self._channel(msg.get("key"))
        sock = socks[0] if socks else None
        try:
            unsent = early = b""
            if sock is not None:
                unsent = await self.fd.receive_bytes(_size(msg, "unsent"), MAX_UNSENT)
                early = await self.fd.receive_bytes(_size(msg, "early"), MAX_EARLY)
            bound = channel.device.byte_budget + (1 << 24) if channel is not None else 0
            queued = await self.fd.receive_bytes(_size(msg, "queued"), bound)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        assert channel is not None or not queued
        peer = None
        if sock is not None:
            peer = PeerHandover(
                sock, unsent + queued, early, bool(msg.get("had-client")), bool(msg.get("spoke"))
            )
        elif queued and channel is not None:
            channel.device.restore_pending_writes(queued)  # (a pipe's bytes, no peer now)
        adoption = self.adoptions.pop(channel.key, None) if channel is not None else None
        if adoption is None:
            if peer is not None:
                peer.close()
            log.warning("handover: a peer for %s was not announced: closed", msg.get("key"))
            return
        adoption.give(peer)
        self.peers += peer is not None
        self.adopted_bytes += len(unsent) + len(queued)


def _size(msg: dict[str, Any], name: str) -> int:
    value = msg.get(name, 0)
    if not isinstance(value, int):
        raise fdpass.HandoverProtocolError(f"{name} is a byte count, not {value!r}")
    return value


async def listen_for_handover(path: str) -> trio.socket.SocketType:
    """A SOCK_SEQPACKET unix socket listening at `path`, its owner's alone (created
    under umask 077: there is no moment when others may connect)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old_mask = os.umask(0o077)
    try:
        await sock.bind(path)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_mask)
    return sock


async def await_handover(
    path: str, server: Server
) -> tuple[list[tuple[socket.socket, bool]], Receiver]:
    """Listen at `path` for the old server (`listen_for_handover`, then
    `accept_handover`)."""
    return await accept_handover(await listen_for_handover(path), server)


async def accept_handover(
    sock: trio.socket.SocketType, server: Server
) -> tuple[list[tuple[socket.socket, bool]], Receiver]:
    """Take the first connection of a process of this user at `sock` (closed then,
    its path removed); return the old server's listening sockets (each with whether it
    is TLS) once its `hello` is taken, and the `Receiver` to run for the rest.
    HandoverRefused for a bad hello (nothing is taken then)."""
    path = sock.getsockname()
    try:
        while True:
            conn, _ = await sock.accept()
            if fdpass.peer_uid(conn) == os.getuid():
                break
            log.warning("handover: a process of another user connected: refused")
            conn.close()
    finally:
        sock.close()
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                os.unlink(path)
    fd = fdpass.FdChannel(conn)
    try:
        msg, socks = await fdpass_hello(fd)
    except BaseException:
        fd.close()
        raise
    secure = msg["listeners"]
    listeners = list(zip(socks[: len(secure)], secure, strict=True))
    receiver = Receiver(server, fd)
    try:
        receiver.plan(msg, socks[len(secure) :])
    except BaseException:
        for s in socks:
            s.close()
        fd.close()
        raise
    log.info(
        "handover: %d listeners taken, %d sessions expected", len(listeners), len(msg["sessions"])
    )
    return listeners, receiver


async def fdpass_hello(fd: fdpass.FdChannel) -> tuple[dict[str, Any], list[socket.socket]]:
    """The old server's `hello`, checked: version, and one socket per listener."""
    msg, socks = await fd.receive()
    secure = msg.get("listeners")
    ok = (
        msg.get("t") == "hello"
        and msg.get("version") == 1
        and isinstance(secure, list)
        and all(isinstance(x, bool) for x in secure)
        and isinstance(msg.get("sessions"), list)
        and isinstance(msg.get("channels"), list)
        and len(socks) >= len(secure)
    )
    if not ok:
        for s in socks:
            s.close()
        raise HandoverRefused(f"not a handover hello: {str(msg)[:200]}")
    return msg, socks
