"""The SPICE server (spice-server's reds): listeners, connections, sessions, channels.

Every connection is a task in the server's nursery; a connection that misbehaves is
logged and closed, and nothing else is touched. The parts: the channel registry
(`registry.py`), a connection's way to its link (`connection.py`), the link handshake
(`link_driver.py`), the linked channels (`channel_runner.py`), the session table
(`session.py`), the sockets (`sockets.py`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio

from ..backends import Backend
from ..protocol import ChannelType, LinkError, MigrationDstInfo, check_password
from .accept import Acceptor, raise_fd_limit
from .admission import PendingLink, PendingLinks, source_key
from .channel import Traffic
from .channel_runner import ChannelRunner
from .config import ServerConfig
from .conn_errors import log_connection_error
from .connection import ConnInfo, client_stream, sniff, tls_handshake
from .events import EventHub, basic_info
from .heap import pin_mmap_threshold, trim_periodically
from .keypool import KeyPool
from .keys import KeyMaker
from .link_driver import LinkDriver
from .link_policy import ChannelKey, LinkPolicy
from .main_channel import MainChannelClient, MigrationOutcome
from .migration_main import LEAVE_TIMEOUT, STEP_TIMEOUT, migrate_sessions
from .registry import ChannelRegistry
from .session import EXPECT_TTL, SessionTable
from .sockets import close_quietly, format_address, open_listeners
from .vmc import VmcChannel

log = logging.getLogger(__name__)


class Server:
    """A trio SPICE server hosting a main channel and VMC channels.

    Use `await nursery.start(server.serve)` (its start value is the list of bound
    addresses: (host, port) tuples and unix paths), or `async with server:`.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.password = check_password(self.config.password)
        self.ticket_expiry = self.config.ticket_expiry  # may change at run time
        self.keys = KeyPool(self.config.key_pool_size)
        self.key_maker = KeyMaker(self.keys, self.config.key_process)
        self.sessions = SessionTable(self.config.multi_session)
        self.pending = PendingLinks(
            self.config.max_pending_links, self.config.max_pending_per_source
        )
        self.registry = ChannelRegistry(self.config.vmc_byte_budget, self._offered)
        self.policy = LinkPolicy(self.config, self.registry.available)
        self.linker = LinkDriver(self.policy, self.sessions, self.key_maker, self)
        self.events = EventHub()
        self.runner = ChannelRunner(
            self.config, self.registry, self.sessions, self.policy, self.events, lambda: self.auth
        )
        # sessions moved here (by path) and away (`migrate_sessions`, by outcome)
        self.migrations_in = self.runner.migrations_in
        self.migrations_out = self.runner.migrations_out
        self.connections = 0
        self.tls_failures = 0
        self.tls_addresses: list[object] = []
        self.addresses: list[object] = []  # the plain ones, once serving
        # the listening sockets while serving, each with whether it is TLS (a handover
        # passes them on), and their accept loops
        self.listeners: list[tuple[trio.socket.SocketType, bool]] = []
        self._acceptor = Acceptor()
        self.handed_over = trio.Event()  # a handover moved everything here
        # nothing is left to serve (`trivmc serve` then exits): set by the control
        # socket's handover once its answer is sent
        self.done = trio.Event()
        self._stack = contextlib.AsyncExitStack()

    # ---- channels (the registry's, see registry.py) ----------------------------

    @property
    def channels(self) -> dict[ChannelKey, VmcChannel]:
        """The hosted channels by (type, id) (the registry's own dict: read it only)."""
        return self.registry.channels

    def add_channel(self, channel: VmcChannel) -> VmcChannel:
        """Host `channel`, before or while serving. While serving, its device and
        backend start at once and, once it is offered, every session is told of it."""
        return self.registry.add(channel)

    async def remove_channel(self, channel: VmcChannel) -> None:
        """Stop hosting `channel`: its client is closed, its device and backend stop,
        and every buffer it held is released before this returns. New links to it are
        refused from now on (sessions are not told: SPICE has no message for that)."""
        await self.registry.remove(channel)

    def add_usbredir(self, backend: Backend, channel_id: int | None = None) -> VmcChannel:
        """Host a usbredir channel (`ChannelRegistry.add_usbredir`), as `add_channel` does."""
        return self.registry.add_usbredir(backend, channel_id)

    def add_port(self, name: str, backend: Backend) -> VmcChannel:
        """Host port `name`, as `add_channel` does; ValueError if a port has that name."""
        return self.registry.add_port(name, backend)

    def add_webdav(self, backend: Backend) -> VmcChannel:
        """Host the webdav channel (id 0), as `add_channel` does."""
        return self.registry.add_webdav(backend)

    def find_channel(self, name: str) -> VmcChannel:
        """The hosted channel `name` names (`ChannelRegistry.find`); LookupError if none."""
        return self.registry.find(name)

    def channel_list(self) -> list[ChannelKey]:
        """The channels offered now (a usbredir channel whose guest side is closed is
        not)."""
        return self.registry.offered()

    def _offered(self, channel: VmcChannel) -> None:
        """Tell every connected session that `channel` is offered (CHANNELS_LIST with it
        alone, as spice-server does for a channel registered after the link)."""
        self.sessions.announce([channel.key])

    # ---- tickets at run time (QEMU's set_password / expire_password) -------------

    def set_password(self, password: str, connected: str = "keep") -> None:
        """Set the ticket (enabling ticketing), as spice_server_set_ticket does: with
        `connected="fail"` refuse (ValueError) while a session is connected, with
        "disconnect" close every session, with "keep" leave them. An expiry set by
        `expire_password` stays in force (QEMU keeps it across set_password)."""
        if connected not in ("keep", "disconnect", "fail"):
            raise ValueError(f"connected must be keep, disconnect or fail, not {connected!r}")
        if connected == "fail" and len(self.sessions):
            raise ValueError("Could not set password: a client is connected")
        self.password = check_password(password)
        log.info("ticket set (connected=%s)", connected)
        if connected == "disconnect":
            for session in list(self.sessions):
                log.info("session %#010x: closed: the ticket changed", session.connection_id)
                self.sessions.remove(session)

    def expire_password(self, when: float | None) -> None:
        """Refuse tickets from `when` (a `time.time()` value) on; None: never."""
        self.ticket_expiry = when
        log.info("ticket expiry: %s", "never" if when is None else f"{when:.0f}")

    @property
    def auth(self) -> str:
        """QEMU's name of the link policy: "spice" with ticketing, else "none"."""
        return "none" if self.password is None else "spice"

    def disconnect_session(self, connection_id: int) -> bool:
        """Close the session `connection_id` and all of its channels; False if none."""
        session = self.sessions.get(connection_id)
        if session is None:
            return False
        log.info("session %#010x: closed by the operator", connection_id)
        self.sessions.remove(session)
        return True

    def expect_migration(self, connection_id: int, ttl: float = EXPECT_TTL) -> None:
        """Be a migration target for the client of session `connection_id` on its
        source: the main link presenting that id within `ttl` seconds keeps it, and
        the first link of each VMC channel in that session takes the source's
        MIGRATE_DATA before any DATA (docs/migration.md). ValueError unless a
        non-zero u32."""
        self.sessions.expect(connection_id, ttl)

    # ---- migration: this server as a source (main_channel.py, migration_main.py) ----

    def main_clients_of(self, connection_id: int) -> MainChannelClient | None:
        """The live main channel of session `connection_id`, if any."""
        return next((m for m in self.main_clients if m.session_id == connection_id), None)

    def session_channels(self, connection_id: int) -> list[VmcChannel]:
        """The hosted channels whose client belongs to session `connection_id`."""
        return [
            c
            for c in self.channels.values()
            if c.client and c.client.connection_id == connection_id
        ]

    async def migrate_sessions(
        self,
        dst: MigrationDstInfo,
        *,
        connect_timeout: float,
        channel_step: Callable[[VmcChannel], Awaitable[None]] | None = None,
        step_timeout: float = STEP_TIMEOUT,
        leave_timeout: float | None = LEAVE_TIMEOUT,
        seamless: bool = True,
    ) -> dict[int, MigrationOutcome]:
        """Move every live session's client to `dst` (`migration_main.migrate_sessions`,
        docs/migration.md; `seamless=False`: semi-seamless only, QEMU's default); how
        each moved, by connection id, also counted in `migrations_out` (FAILED and NONE
        got SWITCH_HOST)."""
        mains = {m.session_id: m for m in self.main_clients if self.sessions.get(m.session_id)}
        return await migrate_sessions(
            mains,
            self.session_channels,
            dst,
            connect_timeout=connect_timeout,
            channel_step=channel_step,
            step_timeout=step_timeout,
            leave_timeout=leave_timeout,
            close_session=self.sessions.remove,
            counts=self.runner.migrations_out,
            seamless=seamless,
        )

    # ---- counters ----------------------------------------------------------------

    @property
    def links_refused(self) -> int:
        """Links refused."""
        return self.linker.refused

    @property
    def links_refused_by(self) -> Counter[LinkError]:
        """Links refused, by the code sent."""
        return self.linker.refused_by

    @property
    def links_accepted(self) -> Counter[ChannelType]:
        """Links accepted, by channel type."""
        return self.linker.accepted

    @property
    def main_traffic(self) -> Traffic:
        """The traffic of the main channels that ended."""
        return self.runner.main_traffic

    @property
    def main_clients(self) -> set[MainChannelClient]:
        """The live main channels."""
        return self.runner.main_clients

    @property
    def pending_links(self) -> int:
        """Connections accepted and not linked yet."""
        return len(self.pending)

    # ---- serving ---------------------------------------------------------------

    async def serve(
        self,
        *,
        inherited: Sequence[tuple[socket.socket, bool]] = (),
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; every task started here ends with it.

        Only cancellation or a failing listener ends it: a connection's failure ends
        that connection, and a channel whose backend fails is restarted.
        `inherited`: sockets already bound and listening (systemd socket activation,
        `systemd.py`), each with whether it is TLS, served besides the configured
        addresses; they are the server's from the call on (closed when it ends).
        The start value lists the plain addresses ((host, port) tuples and unix paths);
        the TLS ones are in `tls_addresses`. Raises ValueError when there is nothing to
        listen on and OSError when an address cannot be bound.
        """
        if self.config.raise_fd_limit:
            raise_fd_limit()
        listeners = await open_listeners(self.config, inherited)
        if not listeners:
            raise ValueError("nothing to listen on: give listen, tls_listen or unix addresses")
        self.tls_addresses = [addr for _, addr, secure in listeners if secure]
        addresses = self.addresses = [addr for _, addr, secure in listeners if not secure]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.key_maker.run)
                if self.config.heap_trim_interval:
                    pin_mmap_threshold()
                    nursery.start_soon(trim_periodically, self.config.heap_trim_interval)
                # from here on add_channel starts a channel itself; one added while the
                # first keys were made is started here, with the others (once)
                self.registry.start(nursery)
                self.listeners = [(sock, secure) for sock, _, secure in listeners]
                self._acceptor.start(
                    nursery, listeners, functools.partial(self._accepted, nursery)
                )
                task_status.started(addresses)
        finally:
            self.registry.stop()
            for sock, _, _ in listeners:
                sock.close()

    def stop_accepting(self) -> None:
        """Accept no more connections (a handover: the next process accepts on the same
        listening sockets); the connections served go on."""
        self._acceptor.stop()

    def resume_accepting(self) -> None:
        """Accept again after `stop_accepting` (the handover failed)."""
        self._acceptor.resume()

    async def __aenter__(self) -> list[object]:
        """Serve in the background; the value is the list of bound addresses."""
        self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(running_server(self))

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # ---- one connection --------------------------------------------------------

    def _accepted(
        self, nursery: trio.Nursery, sock: trio.socket.SocketType, addr: object, *, secure: bool
    ) -> None:
        """Admit a fresh connection (or refuse it at once) and start its task."""
        self.connections += 1
        slot = self.pending.admit(source_key(sock.family, addr))
        if slot is None:
            sock.close()
            return
        nursery.start_soon(self._handle_connection, sock, addr, slot, secure)

    async def _handle_connection(
        self, sock: trio.socket.SocketType, addr: object, slot: PendingLink, secure: bool
    ) -> None:
        """Everything one connection does; whatever it raises ends it alone (logged)."""
        is_unix = sock.family == socket.AF_UNIX
        peer = "unix" if is_unix else format_address(addr)
        conn = ConnInfo(peer + (" tls" if secure else ""), is_unix, secure, websocket=False)
        stream: trio.abc.AsyncResource | None = None
        try:
            conn.serial = self.events.next_serial()
            conn.server_info = basic_info(sock.family, sock.getsockname())
            conn.client_info = basic_info(sock.family, addr)
            self.events.emit(
                "SPICE_CONNECTED", {"server": conn.server_info, "client": conn.client_info}
            )
            stream = plain = client_stream(sock, self.config.tcp_keepalive)
            linked = None
            with slot.scope:
                slot.scope.deadline = trio.current_time() + self.config.link_timeout
                if secure:
                    assert self.config.tls is not None
                    tls = await tls_handshake(
                        plain, self.config.tls, self.config.tls_handshake_timeout, conn
                    )
                    if tls is None:
                        self.tls_failures += 1
                        return
                    stream = tls
                stream, initial = await sniff(stream, conn, self.config.websocket)
                if initial is not None:
                    linked = await self.linker.link(stream, conn, initial)
            self.pending.done(slot)
            if slot.scope.cancelled_caught:
                if slot.evicted:
                    log.info("%s: dropped before linking: too many connections linking", peer)
                else:
                    log.info(
                        "%s: link not finished in %.0f s: dropped",
                        conn.peer,
                        self.config.link_timeout,
                    )
            if linked is not None:
                await self.runner.run(stream, linked, conn)
                log.info("%s: closed", conn.peer)
        except* Exception as group:
            log_connection_error(conn.peer, group)
        finally:
            self.pending.done(slot)
            self.events.linked.pop(conn.serial, None)
            if conn.client_info is not None:
                self.events.emit(
                    "SPICE_DISCONNECTED", {"server": conn.server_info, "client": conn.client_info}
                )
            if stream is None:
                sock.close()
            else:
                await close_quietly(stream)


@contextlib.asynccontextmanager
async def running_server(server: Server) -> AsyncIterator[list[object]]:
    """Serve in a private nursery while the block runs; stop it afterwards."""
    async with trio.open_nursery() as nursery:
        addresses: list[object] = await nursery.start(server.serve)
        try:
            yield addresses
        finally:
            nursery.cancel_scope.cancel()
