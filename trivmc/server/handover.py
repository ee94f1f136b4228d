"""The old process's side of a handover (docs/handover.md): a running server gives its
listening sockets, its sessions and its backends' peer sockets to a new server on the
same host, so an upgrade detaches nothing.

Order, and why:
1. `hello`: the listening sockets (SCM_RIGHTS), the sessions to expect and the channel
   plan (which channel brings a peer, a backend listener, an open guest side). The new
   server expects those sessions, makes those backends wait for their peers, and
   starts accepting on the same sockets; at its `ready` this one stops accepting. The
   sockets never close, so no connection attempt is refused.
2. Every session's client is told to migrate seamlessly to the same address
   (`Server.migrate_sessions`). Per channel with a client (`_move_channel`): the
   backend stops reading its peer, what it read reaches the client, MIGRATE goes out,
   and the device's queue leaves as MIGRATE_DATA at the client's flush mark; then the
   peer socket is released, unclosed, with the bytes still in flight, and sent on.
3. Channels without a migrated client send their peers the same way; their device
   queue travels in the handover message itself.
4. `done`: the new server stops waiting for peers that will not come.

If the handover breaks off (the new process dies, or answers what it should not),
this server takes back what is still here (`Handover.roll_back`) and goes on serving:
it accepts again, its backends read their peers again (or, for a peer that already
went, find a new one), sessions not told to move yet get MIGRATE_CANCEL and go on, and
the sessions that were told to move are closed (their clients went to the new one).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..backends.handover import PeerHandover
from ..backends.listening import ListeningBackend
from ..backends.peer_bridge import StreamBackend
from ..protocol import MigrationDstInfo
from ..transport import fdpass
from .sockets import format_address

if TYPE_CHECKING:
    from .server import Server
    from .vmc import VmcChannel

log = logging.getLogger(__name__)

HANDOVER_VERSION = 1
DRAIN = 5.0  # seconds a peer has to take what was sent to it before its release
MIGRATED_TIMEOUT = 10.0  # for a client's flush mark once MIGRATE is out


class HandoverFailed(Exception):
    """The handover broke off; this server took back what was still here and goes
    on serving (the text says why, and what was lost)."""


@dataclass
class HandoverReport:
    """What moved: sessions by outcome, peers handed over, and the bytes in flight."""

    outcomes: dict[int, str] = field(default_factory=dict)
    peers: int = 0
    listeners: int = 0
    unsent_bytes: int = 0  # taken for a peer, not yet sent to it: sent by the new one
    queued_bytes: int = 0  # a device's queue without a migrated client
    migrated_bytes: int = 0  # a device's queue carried by a client's MIGRATE_DATA
    lost_bytes: int = 0  # in flight to a new process that broke off: gone with it
    started: float = 0.0
    finished: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {str(k): v for k, v in self.outcomes.items()},
            "peers": self.peers,
            "listeners": self.listeners,
            "unsent-bytes": self.unsent_bytes,
            "queued-bytes": self.queued_bytes,
            "migrated-bytes": self.migrated_bytes,
            "seconds": round(self.finished - self.started, 6),
        }


def _stream_backend(channel: VmcChannel) -> StreamBackend | None:
    backend = channel.backend
    return backend if isinstance(backend, StreamBackend) else None


def destination(server: Server, host: str | None) -> MigrationDstInfo:
    """Where the clients go: this server's own listening address (the new process
    accepts there). `host`: the name clients reach it by, when the listener is bound
    to a wildcard address."""
    plain = [a for a in server.addresses if isinstance(a, tuple)]
    tls = [a for a in server.tls_addresses if isinstance(a, tuple)]
    if not plain and not tls:
        raise ValueError("a handover needs a TCP listener: clients migrate to an address")
    first = (plain or tls)[0]
    name = host or str(first[0])
    if name in ("0.0.0.0", "::", ""):
        name = "127.0.0.1" if name != "::" else "::1"
    port = int(plain[0][1]) if plain else 0
    sport = int(tls[0][1]) if tls else 0
    return MigrationDstInfo(port, sport, name.encode())


class Handover:
    """One handover of `server` to the process listening at a handover socket."""

    def __init__(self, server: Server, fd: fdpass.FdChannel, *, drain: float = DRAIN) -> None:
        self.server = server
        self.fd = fd
        self.drain = drain
        self.report = HandoverReport()
        self._sent: set[tuple[int, int]] = set()  # channels whose peer message went
        self._told: set[int] = set()  # sessions whose VMC clients were told MIGRATE
        self.broken: str | None = None  # why the new server cannot go on (the move stops)
        self._move_scope: trio.CancelScope | None = None
        self._sending = trio.Lock()  # channels move concurrently; the socket is one

    async def hello(self) -> None:
        """Listeners, sessions and the channel plan; returns at the new server's ready,
        after which this server accepts no more."""
        server = self.server
        plan: list[dict[str, Any]] = []
        backend_listeners: list[socket.socket] = []
        for channel in server.channels.values():
            backend = _stream_backend(channel)
            entry: dict[str, Any] = {
                "key": list(channel.key),
                "fe-open": channel.chardev.fe_open,
                "peer": backend is not None and not backend.released,
                "listener": False,
            }
            if isinstance(backend, ListeningBackend):
                sock = backend.release_listener()
                if sock is not None:
                    backend_listeners.append(sock)
                    entry["listener"] = True
            plan.append(entry)
        listeners = [sock for sock, _ in server.listeners]
        try:
            await self.fd.send(
                {
                    "t": "hello",
                    "version": HANDOVER_VERSION,
                    "listeners": [secure for _, secure in server.listeners],
                    "sessions": [s.connection_id for s in server.sessions],
                    "channels": plan,
                },
                [*listeners, *backend_listeners],
            )
        finally:
            for s in backend_listeners:
                s.close()  # (a duplicate: the new process has its own now)
        self.report.listeners = len(listeners) + len(backend_listeners)
        msg, _ = await self.fd.receive()
        if msg.get("t") != "ready":
            raise fdpass.HandoverProtocolError(f"expected ready, got {msg.get('t')!r}")
        server.stop_accepting()
        log.info("handover: the new server accepts on %d listeners", len(listeners))

    async def move_channel(self, channel: VmcChannel) -> None:
        """A channel with a client being migrated: stop reading the peer, hand the
        client what was read, MIGRATE (the device's queue leaves as MIGRATE_DATA at
        the flush mark), then the peer with what is in flight."""
        backend = _stream_backend(channel)
        if backend is not None:
            await backend.stop_reading()
        await channel.chardev.wait_drained()
        client = channel.migrate_client()
        if client is not None:
            self._told.add(client.connection_id)
            with trio.move_on_after(MIGRATED_TIMEOUT):
                await client.migrated.wait()
            if client.migrated.is_set():
                self.report.migrated_bytes += client.migrated_bytes
            else:
                log.warning("handover: %s: no flush mark from the client", channel.label)
        try:
            await self.send_peer(channel)
        except (OSError, EOFError) as e:
            self._break(f"the new server is gone: {e}")

    async def move_sessions(self, dst: MigrationDstInfo, connect_timeout: float) -> None:
        """Every session's client told to migrate to `dst`, each channel moved by
        `move_channel`, while watching the new server: if it goes away (or says what
        it should not) the move stops and `broken` says why."""
        if not list(self.server.sessions):
            return
        with trio.CancelScope() as self._move_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch)
                outcomes = await self.server.migrate_sessions(
                    dst,
                    connect_timeout=connect_timeout,
                    channel_step=self.move_channel,
                    leave_timeout=None,  # (this server stops after the handover)
                )
                self.report.outcomes = {cid: o.value for cid, o in outcomes.items()}
                nursery.cancel_scope.cancel()  # (the watch)

    async def _watch(self) -> None:
        """The new server says nothing while the sessions move: anything, or the end
        of the connection, breaks the handover off."""
        try:
            msg, socks = await self.fd.receive()
            for sock in socks:
                sock.close()
            why = f"unexpected {msg.get('t')!r} from the new server"
        except (EOFError, OSError, fdpass.HandoverProtocolError) as e:
            why = f"the new server is gone: {e}"
        self._break(why)

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.error("handover: %s", why)
        if self._move_scope is not None:
            self._move_scope.cancel()

    def roll_back(self) -> int:
        """After a handover broke off: take back what is still here and go on
        serving. Returns the number of sessions closed (those told to move)."""
        server = self.server
        closed = 0
        for main in list(server.main_clients):
            session = server.sessions.get(main.session_id)
            if main.migrated_out or main.session_id in self._told:
                if session is not None:
                    log.warning("handover: session %#010x: closed (told to move)", main.session_id)
                    server.sessions.remove(session)
                    closed += 1
            elif main.migration_dst is not None:
                main.cancel_migration()  # (the client goes on here)
        for channel in server.channels.values():
            backend = _stream_backend(channel)
            if backend is not None:
                backend.reclaim()
        server.resume_accepting()
        return closed

    async def send_peer(self, channel: VmcChannel) -> None:
        """Release the channel's peer (if any) and send it, with the bytes in flight
        and whatever the device still holds (once per channel)."""
        if channel.key in self._sent:
            return
        self._sent.add(channel.key)
        backend = _stream_backend(channel)
        if backend is not None:
            await backend.stop_reading()  # (the session boundary leaves the peer alone)
        # first, in one step: the device writes nothing more here, and a session
        # boundary finds nothing to drop (these bytes are newer than the peer's unsent)
        queued = channel.device.take_pending_writes()
        peer: PeerHandover | None = None
        try:
            if backend is not None:
                peer = await backend.release_peer(self.drain)
            msg: dict[str, Any] = {"t": "peer", "key": list(channel.key), "queued": len(queued)}
            if peer is not None:
                msg.update(
                    unsent=len(peer.unsent),
                    early=len(peer.early),
                    **{"had-client": peer.had_client, "spoke": peer.spoke},
                )
            async with self._sending:  # a message and its bytes, not interleaved
                await self.fd.send(msg, [peer.sock] if peer is not None else [])
                if peer is not None:
                    await self.fd.send_bytes(peer.unsent)
                    await self.fd.send_bytes(peer.early)
                await self.fd.send_bytes(queued)
        except BaseException:
            # the peer and its bytes are gone (a session's bytes never go to another
            # peer); the backend finds a new peer if the handover is rolled back
            lost = len(queued) + (len(peer.unsent) if peer is not None else 0)
            self.report.lost_bytes += lost
            log.warning("handover: %s: not handed over: %d bytes lost", channel.label, lost)
            raise
        finally:
            if peer is not None:
                peer.close()  # (the new process holds its own descriptor)
        if peer is not None:
            self.report.peers += 1
            self.report.unsent_bytes += len(peer.unsent)
        self.report.queued_bytes += len(queued)
        log.info("handover: %s: handed over (peer: %s)", channel.label, peer is not None)

    async def finish(self) -> None:
        """Every other channel's peer, then `done`; returns at the new server's `bye`.
        A client still attached (it was not migrated: it reconnects to the new server)
        is disconnected first, and the device's queue taken in the same step, so that
        nothing it sent is left behind here."""
        for channel in list(self.server.channels.values()):
            if channel.key in self._sent:
                continue
            backend = _stream_backend(channel)
            if backend is not None:
                await backend.stop_reading()  # (its session boundary leaves the peer)
            channel.disconnect_client()  # (then, with no scheduling point, its queue)
            await self.send_peer(channel)
        await self.fd.send({"t": "done"})
        msg, _ = await self.fd.receive()
        if msg.get("t") != "bye":
            raise fdpass.HandoverProtocolError(f"expected bye, got {msg.get('t')!r}")


async def hand_over(
    server: Server,
    path: str,
    *,
    host: str | None = None,
    connect_timeout: float = 10.0,
    drain: float = DRAIN,
) -> HandoverReport:
    """Hand every session, listener and backend peer of `server` to the server waiting
    at the handover socket `path` (`trivmc serve --await-handover PATH`); set
    `server.handed_over` at the end (the caller stops serving then). Raises OSError
    when nobody waits there (nothing changed), and HandoverFailed when the handover
    broke off (`Handover.roll_back`: this server goes on serving); cancelled, it rolls
    back the same way."""
    dst = destination(server, host)
    fd = await fdpass.connect(path)
    handover = Handover(server, fd, drain=drain)
    handover.report.started = trio.current_time()
    try:
        await handover.hello()
        await handover.move_sessions(dst, connect_timeout)
        if handover.broken is not None:
            raise HandoverFailed(handover.broken)
        await handover.finish()
    except (OSError, EOFError, fdpass.HandoverProtocolError, HandoverFailed) as e:
        closed = handover.roll_back()
        lost = handover.report.lost_bytes
        raise HandoverFailed(
            f"{e}; this server goes on serving ({closed} sessions told to move were"
            f" closed, {handover.report.peers} peers went, {lost} bytes in flight lost)"
        ) from e
    except BaseException:  # cancelled (the server stops, or whoever asked went away)
        handover.roll_back()
        raise
    finally:
        fd.close()
    handover.report.finished = trio.current_time()
    log.info("handover to %s done: %s", format_address(path), handover.report.as_dict())
    server.handed_over.set()
    return handover.report
