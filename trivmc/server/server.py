"""The SPICE server (spice-server's reds): listeners, link, sessions, channel registry.

Every connection is a task in the server's nursery; a connection that misbehaves is
logged and closed, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..backends import Backend
from ..protocol import (
    ChannelType,
    LinkError,
    LinkFailed,
    LinkMess,
    LinkRequest,
    ServerLink,
    TicketReceived,
    check_password,
    verify_ticket,
)
from ..protocol.ticket import LinkKey
from ..transport import accept_websocket
from ..transport.tlssocket import TLSSocketStream
from .accept import accept_loop, raise_fd_limit
from .admission import PendingLink, PendingLinks, source_key
from .channel import ChannelOptions, Traffic
from .config import ServerConfig
from .conn_errors import log_connection_error
from .events import EventHub, LinkedChannel, basic_info
from .heap import trim_periodically
from .keypool import KeyPool
from .keys import KeyMaker
from .link_policy import LinkPolicy
from .main_channel import MainChannelClient
from .session import ServerSession, SessionTable
from .sockets import (
    close_quietly,
    format_address,
    listen_tcp,
    listen_unix,
    local_address,
    set_keepalive,
)
from .vmc import VmcChannel, VmcChannelClient

log = logging.getLogger(__name__)

LINK_RECEIVE = 4096
BACKEND_RESTART_PAUSE = 1.0
BACKEND_RESTART_MAX = 30.0
SPICE_MAGIC = b"REDQ"
HTTP_GET = b"GET "
MAX_CHANNEL_ID = 255


@dataclass
class _Conn:
    """What a connection came over: for logs, the link policy and the LZ4 rules."""

    peer: str
    is_unix: bool
    secure: bool
    websocket: bool
    serial: int = 0
    server_info: dict[str, Any] | None = None  # QEMU's SpiceBasicInfo of both ends
    client_info: dict[str, Any] | None = None


@dataclass
class _ChannelTask:
    """The task running a channel's device and backend: cancel `scope` to stop it."""

    scope: trio.CancelScope
    done: trio.Event


@dataclass
class _Linked:
    mess: LinkMess
    mini_header: bool
    trailing: bytes
    session: ServerSession | None


class Server:
    """A trio SPICE server hosting a main channel and VMC channels.

    Use `await nursery.start(server.serve)` (its start value is the list of bound
    addresses: (host, port) tuples and unix paths), or `async with server:`.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.password = check_password(self.config.password)
        self.keys = KeyPool(self.config.key_pool_size)
        self.key_maker = KeyMaker(self.keys, self.config.key_process)
        self.sessions = SessionTable(self.config.multi_session)
        self.pending = PendingLinks(
            self.config.max_pending_links, self.config.max_pending_per_source
        )
        self.channels: dict[tuple[int, int], VmcChannel] = {}
        self.policy = LinkPolicy(self.config, self._channel_available)
        self._channel_tasks: dict[tuple[int, int], _ChannelTask] = {}
        self.links_refused = 0
        self.links_refused_by: Counter[LinkError] = Counter()  # by the code sent
        self.links_accepted: Counter[ChannelType] = Counter()  # by channel type
        self.main_traffic = Traffic()  # of the main channels that ended
        self.main_clients: set[MainChannelClient] = set()  # the live ones
        self.connections = 0
        self.tls_failures = 0
        self.tls_addresses: list[object] = []
        self.addresses: list[object] = []  # the plain ones, once serving
        self.events = EventHub()
        self.ticket_expiry = self.config.ticket_expiry  # may change at run time
        self._nursery: trio.Nursery | None = None
        self._stack = contextlib.AsyncExitStack()

    # ---- channel registry ------------------------------------------------------

    def add_channel(self, channel: VmcChannel) -> VmcChannel:
        """Host `channel`, before or while serving. While serving, its device and
        backend start at once and, once it is offered, every session is told of it."""
        if channel.key in self.channels:
            raise ValueError(f"channel {channel.label} is already registered")
        if channel.removed:  # its state went with it: a new VmcChannel takes its place
            raise ValueError(f"channel {channel.label} was removed: host a new one")
        self.channels[channel.key] = channel
        channel.on_available = self._announce
        if self._nursery is not None:
            self._start_channel(self._nursery, channel)
            if channel.available:
                self._announce(channel)
        return channel

    async def remove_channel(self, channel: VmcChannel) -> None:
        """Stop hosting `channel`: its client is closed, its device and backend stop,
        and every buffer it held is released before this returns. New links to it are
        refused from now on (sessions are not told: SPICE has no message for that)."""
        if self.channels.get(channel.key) is not channel:
            raise ValueError(f"channel {channel.label} is not hosted here")
        del self.channels[channel.key]
        channel.removed = True
        channel.disconnect_client()
        task = self._channel_tasks.pop(channel.key, None)
        if task is not None:
            task.scope.cancel()
            await task.done.wait()
        await channel.wait_no_client()
        channel.device.reset()
        log.info("%s: removed", channel.label)

    def _start_channel(self, nursery: trio.Nursery, channel: VmcChannel) -> None:
        task = _ChannelTask(trio.CancelScope(), trio.Event())
        self._channel_tasks[channel.key] = task
        nursery.start_soon(self._run_channel_device, channel, task)

    def _announce(self, channel: VmcChannel) -> None:
        """Tell every connected session that `channel` is offered (CHANNELS_LIST with it
        alone, as spice-server does for a channel registered after the link)."""
        if self.channels.get(channel.key) is not channel or not channel.available:
            return
        for session in self.sessions:
            if session.announce is not None:
                session.announce([channel.key])

    def _next_id(self, channel_type: ChannelType) -> int:
        """The lowest free id; the wire gives a channel id one byte, so a server holds
        at most 256 channels of a type (ValueError past that)."""
        used = {cid for (t, cid) in self.channels if t == channel_type}
        free = (i for i in range(MAX_CHANNEL_ID + 1) if i not in used)
        cid = next(free, None)
        if cid is None:
            raise ValueError(
                f"no free {channel_type.name.lower()} channel id: a SPICE channel id is one"
                f" byte, so a server holds at most {MAX_CHANNEL_ID + 1} of a type"
            )
        return cid

    def add_usbredir(self, backend: Backend, channel_id: int | None = None) -> VmcChannel:
        cid = self._next_id(ChannelType.USBREDIR) if channel_id is None else channel_id
        return self.add_channel(
            VmcChannel(ChannelType.USBREDIR, cid, backend, byte_budget=self.config.vmc_byte_budget)
        )

    def add_port(self, name: str, backend: Backend) -> VmcChannel:
        for ch in self.channels.values():
            if ch.channel_type == ChannelType.PORT and ch.chardev.port_name == name:
                raise ValueError(f"port {name!r} is already registered")
        cid = self._next_id(ChannelType.PORT)
        return self.add_channel(
            VmcChannel(
                ChannelType.PORT, cid, backend, name, byte_budget=self.config.vmc_byte_budget
            )
        )

    def add_webdav(self, backend: Backend) -> VmcChannel:
        return self.add_channel(
            VmcChannel(ChannelType.WEBDAV, 0, backend, byte_budget=self.config.vmc_byte_budget)
        )

    def find_channel(self, name: str) -> VmcChannel:
        """The hosted channel `name` names: a port's name (`org.qemu.monitor.qmp.0`;
        it wins), `usbredir:N` (`usbredir` is `usbredir:0`), `webdav`, or `port:N`.
        LookupError, naming what is hosted, when there is none."""
        kind, sep, cid = name.partition(":")
        types = {"usbredir": ChannelType.USBREDIR, "port": ChannelType.PORT}
        if name == "webdav":
            key: tuple[int, int] | None = (ChannelType.WEBDAV, 0)
        elif kind in types and (cid.isdigit() or not sep):
            key = (types[kind], int(cid or 0))
        else:
            key = None
        for ch in self.channels.values():
            if ch.channel_type == ChannelType.PORT and ch.chardev.port_name == name:
                return ch
        if key is not None and key in self.channels:
            return self.channels[key]
        hosted = ", ".join(ch.label for ch in self.channels.values()) or "none"
        raise LookupError(f"no hosted channel {name!r} (hosted: {hosted})")

    def channel_list(self) -> list[tuple[int, int]]:
        """The channels offered now (a usbredir channel whose guest side is closed is
        not)."""
        return sorted(key for key, ch in self.channels.items() if ch.available)

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

    def disconnect_session(self, connection_id: int) -> bool:
        """Close the session `connection_id` and all of its channels; False if none."""
        session = self.sessions.get(connection_id)
        if session is None:
            return False
        log.info("session %#010x: closed by the operator", connection_id)
        self.sessions.remove(session)
        return True

    # ---- serving ---------------------------------------------------------------

    async def _listeners(
        self, inherited: Sequence[tuple[socket.socket, bool]] = ()
    ) -> list[tuple[trio.socket.SocketType, object, bool]]:
        """(listening socket, bound address, is TLS) for every inherited socket, then
        every configured address; the inherited ones are closed if this fails."""
        out: list[tuple[trio.socket.SocketType, object, bool]] = []
        try:
            for std, secure in inherited:
                if secure and self.config.tls is None:
                    raise ValueError("a TLS listener needs a TLS context (certificate and key)")
                sock = trio.socket.from_stdlib_socket(std)
                out.append((sock, local_address(sock), secure))
            for addresses, secure in (
                (self.config.listen, False),
                (self.config.tls_listen, True),
            ):
                for host, port in addresses:
                    out += [
                        (lst.socket, lst.socket.getsockname()[:2], secure)
                        for lst in await listen_tcp(host, port)
                    ]
            for path in self.config.unix:
                out.append((await listen_unix(path), path, False))
        except BaseException:
            for sock, _, _ in out:
                sock.close()
            for std, _ in inherited:
                std.close()
            raise
        return out

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
        the TLS ones are in `tls_addresses`.
        """
        if self.config.raise_fd_limit:
            raise_fd_limit()
        listeners = await self._listeners(inherited)
        if not listeners:
            raise ValueError("nothing to listen on: give listen, tls_listen or unix addresses")
        self.tls_addresses = [addr for _, addr, secure in listeners if secure]
        addresses = self.addresses = [addr for _, addr, secure in listeners if not secure]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.key_maker.run)
                if self.config.heap_trim_interval:
                    nursery.start_soon(trim_periodically, self.config.heap_trim_interval)
                # from here on add_channel starts a channel itself; one added while the
                # first keys were made is started below, with the others (once)
                self._nursery = nursery
                for channel in self.channels.values():
                    self._start_channel(nursery, channel)
                for sock, addr, secure in listeners:
                    name = format_address(addr) + (" (TLS)" if secure else "")
                    on_accept = functools.partial(self._accepted, nursery, secure=secure)
                    nursery.start_soon(accept_loop, sock, on_accept, name)
                    log.info("listening on %s", name)
                task_status.started(addresses)
        finally:
            self._nursery = None
            for sock, _, _ in listeners:
                sock.close()

    async def _run_channel_device(self, channel: VmcChannel, task: _ChannelTask) -> None:
        """Run a channel's char device and backend until it is removed or the server
        stops; a failure is logged, the channel's client is disconnected and the device
        and backend start again after a pause."""
        pause = BACKEND_RESTART_PAUSE
        try:
            with task.scope:
                while True:
                    try:
                        await channel.run()
                        return
                    except Exception as e:
                        log.error(
                            "%s: the backend failed, restarting it in %.0f s",
                            channel.label,
                            pause,
                            exc_info=e,
                        )
                    channel.disconnect_client()
                    await trio.sleep(pause)
                    pause = min(2 * pause, BACKEND_RESTART_MAX)
        finally:
            task.done.set()

    async def __aenter__(self) -> list[object]:
        """Serve in the background; the value is the list of bound addresses."""
        self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(running_server(self))

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # ---- one connection --------------------------------------------------------

    @property
    def pending_links(self) -> int:
        """Connections accepted and not linked yet."""
        return len(self.pending)

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

    def _client_socket(self, sock: trio.socket.SocketType) -> trio.SocketStream:
        """The stream of an accepted socket, with TCP_NODELAY and keepalive set (as
        spice-server does); a failing option is not the connection's end."""
        if sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            if self.config.tcp_keepalive:
                set_keepalive(sock, self.config.tcp_keepalive)
        return trio.SocketStream(sock)

    async def _handle_connection(
        self, sock: trio.socket.SocketType, addr: object, slot: PendingLink, secure: bool
    ) -> None:
        """Everything one connection does; whatever it raises ends it alone (logged)."""
        is_unix = sock.family == socket.AF_UNIX
        peer = "unix" if is_unix else format_address(addr)
        conn = _Conn(peer + (" tls" if secure else ""), is_unix, secure, websocket=False)
        stream: trio.abc.AsyncResource | None = None
        try:
            conn.serial = self.events.next_serial()
            conn.server_info = basic_info(sock.family, sock.getsockname())
            conn.client_info = basic_info(sock.family, addr)
            self.events.emit(
                "SPICE_CONNECTED", {"server": conn.server_info, "client": conn.client_info}
            )
            stream = plain = self._client_socket(sock)
            linked = None
            with slot.scope:
                slot.scope.deadline = trio.current_time() + self.config.link_timeout
                if secure:
                    tls = await self._tls_handshake(plain, conn)
                    if tls is None:
                        return
                    stream = tls
                stream, initial = await self._sniff(stream, conn)
                if initial is not None:
                    linked = await self._link(stream, conn, initial)
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
                await self._run_channel(stream, linked, conn)
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

    async def _tls_handshake(self, sock: trio.SocketStream, conn: _Conn) -> TLSSocketStream | None:
        """The TLS server handshake, bounded by `tls_handshake_timeout`; None (logged)
        when it fails or stalls."""
        assert self.config.tls is not None
        # the TLS stream owns the socket from here: it is closed on every way out
        tls = TLSSocketStream.wrap(sock, self.config.tls, server_side=True)
        try:
            with trio.move_on_after(self.config.tls_handshake_timeout):
                await tls.do_handshake()
                return tls
            log.warning(
                "%s: TLS handshake not finished in %.0f s: dropped",
                conn.peer,
                self.config.tls_handshake_timeout,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.warning("%s: TLS handshake failed: %s", conn.peer, e.__cause__ or e)
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        self.tls_failures += 1
        await trio.aclose_forcefully(tls)
        return None

    async def _sniff(
        self, stream: trio.abc.Stream, conn: _Conn
    ) -> tuple[trio.abc.Stream, bytes | None]:
        """Read the first bytes: `GET ` starts a WebSocket upgrade (the stream returned
        is then the WebSocket one), anything else is the SPICE link. The bytes read are
        returned (None when the peer closed first)."""
        initial = b""
        while len(initial) < 4 and (
            initial == SPICE_MAGIC[: len(initial)] or initial == HTTP_GET[: len(initial)]
        ):
            data = await stream.receive_some(LINK_RECEIVE)
            if not data:
                log.info("%s: closed before the link", conn.peer)
                return stream, None
            initial += data
        if self.config.websocket and initial.startswith(HTTP_GET):
            ws = await accept_websocket(stream, initial)
            conn.websocket = True
            conn.peer += " websocket"
            log.info("%s: WebSocket upgrade accepted", conn.peer)
            return ws, b""
        return stream, initial

    def _refuse(self, peer: str, code: LinkError, why: str) -> None:
        self.links_refused += 1
        self.links_refused_by[code] += 1
        log.warning("%s: link refused (%s): %s", peer, code.name, why)

    def _channel_available(self, key: tuple[int, int]) -> bool:
        """A VMC channel is hosted here and its backend is open (for `self.policy`)."""
        channel = self.channels.get(key)
        return channel is not None and channel.available

    async def _link_key(self) -> LinkKey:
        """The RSA key of one link, taken once its link message is complete: a never-used
        one while a password is set, else the key password-less links share (`keys.py`).
        `self.password` is read per link: it may be set or cleared at runtime."""
        return await self.key_maker.link_key(fresh=self.password is not None)

    async def _link(self, stream: trio.abc.Stream, conn: _Conn, initial: bytes) -> _Linked | None:
        peer = conn.peer
        machine = ServerLink()
        key: LinkKey | None = None
        mess: LinkMess | None = None
        data = initial
        while True:
            if not data:
                data = bytes(await stream.receive_some(LINK_RECEIVE))
                if not data:
                    log.info("%s: closed during the link", peer)
                    return None
            events = machine.feed(data)
            data = b""
            while events:
                ev = events.pop(0)
                if isinstance(ev, LinkFailed):
                    self._refuse(peer, ev.code, ev.reason)
                    if ev.data:
                        await stream.send_all(ev.data)
                    return None
                if isinstance(ev, LinkRequest):
                    mess = ev.mess
                    code, why = self.policy.check(mess, conn)
                    if code != LinkError.OK:
                        self._refuse(peer, code, why)
                        await stream.send_all(machine.refuse(code))
                        return None
                    key = await self._link_key()  # only for a complete, well-formed link
                    caps = self.policy.caps_for(mess, conn)
                    await stream.send_all(machine.accept(key.public_der, caps))
                    events += machine.feed(b"")  # events completed by bytes already buffered
                elif isinstance(ev, TicketReceived):
                    assert mess is not None and key is not None
                    code = verify_ticket(
                        key,
                        ev.ticket,
                        self.password,
                        expiry=self.ticket_expiry,
                        now=time.time(),
                    )
                    session: ServerSession | None = None
                    if code == LinkError.OK and mess.channel_type != ChannelType.MAIN:
                        session = self.sessions.get(mess.connection_id)
                        if session is None:
                            code = LinkError.BAD_CONNECTION_ID
                        elif self.policy.channel_status(mess, conn) != LinkError.OK:
                            code = LinkError.CHANNEL_NOT_AVAILABLE
                    await stream.send_all(machine.result(code))
                    if code != LinkError.OK:
                        self._refuse(peer, code, f"channel {mess.channel_type}:{mess.channel_id}")
                        return None
                    self.links_accepted[ChannelType(mess.channel_type)] += 1
                    return _Linked(mess, machine.mini_header, machine.trailing, session)

    async def _run_channel(self, stream: trio.abc.Stream, linked: _Linked, conn: _Conn) -> None:
        """Serve the linked channel; `conn.peer` names it from now on (the connection's
        last log line, written by the caller, says how it ended)."""
        mess = linked.mess
        main = mess.channel_type == ChannelType.MAIN
        channel = None if main else self.channels.get((mess.channel_type, mess.channel_id))
        if not main and channel is None:
            log.info("%s: the channel was removed during the link", conn.peer)
            return
        opts = ChannelOptions(
            name=f"{conn.peer} {'main' if channel is None else channel.label}",
            mini_header=linked.mini_header,
            max_message=self.config.max_main_message if main else self.config.max_vmc_message,
            is_unix=conn.is_unix,
            ping_interval=self.config.ping_interval,
            ping_misses=self.config.ping_misses,
            max_queued=self.config.max_main_queue if main else self.config.max_vmc_queue,
        )
        conn.peer = opts.name
        if channel is None:
            await self._run_main(stream, opts, linked, conn)
        else:
            assert linked.session is not None
            await self._run_vmc(stream, opts, linked, conn, channel, linked.session)

    @property
    def auth(self) -> str:
        """QEMU's name of the link policy: "spice" with ticketing, else "none"."""
        return "none" if self.password is None else "spice"

    def _initialized(self, conn: _Conn, connection_id: int, mess: LinkMess) -> None:
        """A channel linked: list it (query-spice) and emit SPICE_INITIALIZED."""
        entry = LinkedChannel(
            conn.client_info or {}, connection_id, mess.channel_type, mess.channel_id, conn.secure
        )
        self.events.linked[conn.serial] = entry
        server = {**(conn.server_info or {}), "auth": self.auth}
        self.events.emit("SPICE_INITIALIZED", {"server": server, "client": entry.info()})

    async def _run_main(
        self, stream: trio.abc.Stream, opts: ChannelOptions, linked: _Linked, conn: _Conn
    ) -> None:
        session = self.sessions.create()
        self._initialized(conn, session.connection_id, linked.mess)
        offered = self.policy.offered_to(conn)
        client = MainChannelClient(
            stream,
            opts,
            session_id=session.connection_id,
            channels=lambda: [key for key in self.channel_list() if offered(key)],
            offered=offered,
            client_caps=linked.mess.channel_caps,
            name=self.config.name,
            uuid=self.config.uuid,
        )
        conn.peer += f" (session {session.connection_id:#010x})"
        log.info("%s: linked", conn.peer)
        session.announce = client.announce
        self.main_clients.add(client)
        try:
            with session.scope:
                await client.run(linked.trailing)
        finally:
            self.main_clients.discard(client)
            self.main_traffic.add(client)
            session.announce = None
            self.sessions.remove(session)

    async def _run_vmc(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        linked: _Linked,
        conn: _Conn,
        channel: VmcChannel,
        session: ServerSession,
    ) -> None:
        lz4 = self.policy.client_lz4(linked.mess, conn)
        client = VmcChannelClient(stream, opts, channel=channel, peer_lz4=lz4)
        client.connection_id = session.connection_id
        self._initialized(conn, session.connection_id, linked.mess)
        log.info("%s: linked (client lz4: %s)", conn.peer, "yes" if lz4 else "no")
        with trio.CancelScope() as scope:
            session.join(scope)
            try:
                await channel.serve_client(client, linked.trailing)
            finally:
                session.leave(scope)


@contextlib.asynccontextmanager
async def running_server(server: Server) -> AsyncIterator[list[object]]:
    """Serve in a private nursery while the block runs; stop it afterwards."""
    async with trio.open_nursery() as nursery:
        addresses: list[object] = await nursery.start(server.serve)
        try:
            yield addresses
        finally:
            nursery.cancel_scope.cancel()
