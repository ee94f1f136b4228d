"""The SPICE server (spice-server's reds): listeners, link, sessions, channel registry.

Every connection is a task in the server's nursery; a connection that misbehaves is
logged and closed, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from ..backends import Backend
from ..protocol import (
    VMC_CHANNEL_TYPES,
    ChannelType,
    KeyPool,
    LinkError,
    LinkFailed,
    LinkMess,
    LinkRequest,
    ProtocolError,
    ServerLink,
    TicketReceived,
    VmcCap,
    check_password,
    verify_ticket,
)
from .channel import ChannelOptions
from .config import ServerConfig
from .main_channel import MainChannelClient
from .session import Session, SessionTable
from .vmc import VmcChannel, VmcChannelClient, vmc_channel_caps

log = logging.getLogger(__name__)

LINK_RECEIVE = 4096


@dataclass
class _Linked:
    mess: LinkMess
    mini_header: bool
    trailing: bytes
    session: Session | None


class Server:
    """A trio SPICE server hosting a main channel and VMC channels.

    Use `await nursery.start(server.serve)` (its start value is the list of bound
    addresses: (host, port) tuples and unix paths), or `async with server:`.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.password = check_password(self.config.password)
        self.keys = KeyPool(self.config.key_pool_size)
        self.sessions = SessionTable(self.config.multi_session)
        self.channels: dict[tuple[int, int], VmcChannel] = {}
        self.links_refused = 0
        self.connections = 0
        self._keys_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stack = contextlib.AsyncExitStack()

    # ---- channel registry ------------------------------------------------------

    def add_channel(self, channel: VmcChannel) -> VmcChannel:
        if channel.key in self.channels:
            raise ValueError(f"channel {channel.label} is already registered")
        if self._nursery is not None:
            raise RuntimeError("register channels before serving")
        self.channels[channel.key] = channel
        return channel

    def _next_id(self, channel_type: ChannelType) -> int:
        used = {cid for (t, cid) in self.channels if t == channel_type}
        return next(i for i in range(256) if i not in used)

    def add_usbredir(self, backend: Backend, channel_id: int | None = None) -> VmcChannel:
        cid = self._next_id(ChannelType.USBREDIR) if channel_id is None else channel_id
        return self.add_channel(VmcChannel(ChannelType.USBREDIR, cid, backend))

    def add_port(self, name: str, backend: Backend) -> VmcChannel:
        for ch in self.channels.values():
            if ch.channel_type == ChannelType.PORT and ch.chardev.port_name == name:
                raise ValueError(f"port {name!r} is already registered")
        cid = self._next_id(ChannelType.PORT)
        return self.add_channel(VmcChannel(ChannelType.PORT, cid, backend, name))

    def add_webdav(self, backend: Backend) -> VmcChannel:
        return self.add_channel(VmcChannel(ChannelType.WEBDAV, 0, backend))

    def channel_list(self) -> list[tuple[int, int]]:
        return sorted(self.channels)

    # ---- serving ---------------------------------------------------------------

    async def _listeners(self) -> tuple[list[trio.SocketListener], list[object]]:
        listeners: list[trio.SocketListener] = []
        addresses: list[object] = []
        for host, port in self.config.listen:
            for lst in await trio.open_tcp_listeners(port, host=host):
                listeners.append(lst)
                addresses.append(lst.socket.getsockname()[:2])
        for path in self.config.unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(path)
            sock.listen(128)
            listeners.append(trio.SocketListener(sock))
            addresses.append(path)
        return listeners, addresses

    async def serve(
        self, *, task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; every task started here ends with it."""
        await trio.to_thread.run_sync(self.keys.refill)
        listeners, addresses = await self._listeners()
        if not listeners:
            raise ValueError("nothing to listen on: give listen or unix addresses")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for channel in self.channels.values():
                nursery.start_soon(channel.run)
            nursery.start_soon(self._keep_keys)
            for lst in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle_connection, [lst])
            for addr in addresses:
                log.info("listening on %s", format_address(addr))
            task_status.started(addresses)
        self._nursery = None

    async def __aenter__(self) -> list[object]:
        """Serve in the background; the value is the list of bound addresses."""
        self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(running_server(self))

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _keep_keys(self) -> None:
        while True:
            await self._keys_wanted.wait()
            self._keys_wanted = trio.Event()
            await trio.to_thread.run_sync(self.keys.refill)

    # ---- one connection --------------------------------------------------------

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        is_unix = stream.socket.family == socket.AF_UNIX
        peer = "unix" if is_unix else format_address(stream.socket.getpeername())
        if not is_unix:
            with contextlib.suppress(OSError):
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        try:
            async with stream:
                linked = None
                with trio.move_on_after(self.config.link_timeout) as link_scope:
                    linked = await self._link(stream, peer)
                if link_scope.cancelled_caught:
                    log.info(
                        "%s: link not finished in %.0f s: dropped", peer, self.config.link_timeout
                    )
                if linked is not None:
                    await self._run_channel(stream, linked, peer, is_unix)
        except Exception as e:
            log_connection_error(peer, e)

    def _refuse(self, peer: str, code: LinkError, why: str) -> None:
        self.links_refused += 1
        log.warning("%s: link refused (%s): %s", peer, code.name, why)

    def _check_channel(self, mess: LinkMess) -> LinkError:
        if mess.channel_type == ChannelType.MAIN:
            return LinkError.OK if mess.channel_id == 0 else LinkError.CHANNEL_NOT_AVAILABLE
        if (mess.channel_type, mess.channel_id) not in self.channels:
            return LinkError.CHANNEL_NOT_AVAILABLE
        return LinkError.OK

    async def _link(self, stream: trio.SocketStream, peer: str) -> _Linked | None:
        machine = ServerLink()
        key = self.keys.take()
        self._keys_wanted.set()
        mess: LinkMess | None = None
        while True:
            data = await stream.receive_some(LINK_RECEIVE)
            if not data:
                log.info("%s: closed during the link", peer)
                return None
            events = machine.feed(data)
            while events:
                ev = events.pop(0)
                if isinstance(ev, LinkFailed):
                    self._refuse(peer, ev.code, ev.reason)
                    if ev.data:
                        await stream.send_all(ev.data)
                    return None
                if isinstance(ev, LinkRequest):
                    mess = ev.mess
                    code = self._check_channel(mess)
                    if code != LinkError.OK:
                        self._refuse(
                            peer, code, f"channel {mess.channel_type}:{mess.channel_id} not hosted"
                        )
                        await stream.send_all(machine.refuse(code))
                        return None
                    caps = vmc_channel_caps() if mess.channel_type in VMC_CHANNEL_TYPES else []
                    await stream.send_all(machine.accept(key.public_der, caps))
                    events += machine.pending_events()
                elif isinstance(ev, TicketReceived):
                    assert mess is not None
                    code = verify_ticket(
                        key,
                        ev.ticket,
                        self.password,
                        expiry=self.config.ticket_expiry,
                        now=time.time(),
                    )
                    session: Session | None = None
                    if code == LinkError.OK and mess.channel_type != ChannelType.MAIN:
                        session = self.sessions.get(mess.connection_id)
                        if session is None:
                            code = LinkError.BAD_CONNECTION_ID
                        elif self._check_channel(mess) != LinkError.OK:
                            code = LinkError.CHANNEL_NOT_AVAILABLE
                    await stream.send_all(machine.result(code))
                    if code != LinkError.OK:
                        self._refuse(peer, code, f"channel {mess.channel_type}:{mess.channel_id}")
                        return None
                    return _Linked(mess, machine.mini_header, machine.trailing, session)

    async def _run_channel(
        self, stream: trio.SocketStream, linked: _Linked, peer: str, is_unix: bool
    ) -> None:
        mess = linked.mess
        main = mess.channel_type == ChannelType.MAIN
        channel = None if main else self.channels[(mess.channel_type, mess.channel_id)]
        opts = ChannelOptions(
            name=f"{peer} {'main' if channel is None else channel.label}",
            mini_header=linked.mini_header,
            max_message=self.config.max_main_message if main else self.config.max_vmc_message,
            is_unix=is_unix,
            ping_interval=self.config.ping_interval,
        )
        if channel is None:
            await self._run_main(stream, opts, linked, peer)
        else:
            assert linked.session is not None
            await self._run_vmc(stream, opts, linked, peer, channel, linked.session)

    async def _run_main(
        self, stream: trio.SocketStream, opts: ChannelOptions, linked: _Linked, peer: str
    ) -> None:
        session = self.sessions.create()
        client = MainChannelClient(
            stream, opts, session_id=session.connection_id, channels=self.channel_list
        )
        log.info("%s: main channel linked, session %#010x", peer, session.connection_id)
        try:
            with session.scope:
                await client.run(linked.trailing)
        finally:
            self.sessions.remove(session)
            log.info("%s: main channel closed, session %#010x ended", peer, session.connection_id)

    async def _run_vmc(
        self,
        stream: trio.SocketStream,
        opts: ChannelOptions,
        linked: _Linked,
        peer: str,
        channel: VmcChannel,
        session: Session,
    ) -> None:
        lz4 = linked.mess.has_channel(VmcCap.DATA_COMPRESS_LZ4)
        client = VmcChannelClient(stream, opts, channel=channel, peer_lz4=lz4)
        log.info("%s: %s linked (client lz4: %s)", peer, channel.label, "yes" if lz4 else "no")
        with trio.CancelScope() as scope:
            session.join(scope)
            try:
                await channel.serve_client(client, linked.trailing)
            finally:
                session.leave(scope)
        log.info("%s: %s disconnected", peer, channel.label)


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or [exc] itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaf_exceptions(sub)]
    return [exc]


def log_connection_error(peer: str, exc: BaseException) -> None:
    """Log why a connection ended: a bad peer at warning/info level, a bug with its
    traceback. Exception groups are looked through."""
    for leaf in leaf_exceptions(exc):
        if isinstance(leaf, ProtocolError):
            log.warning("%s: protocol error, closing this connection: %s", peer, leaf)
        elif isinstance(leaf, trio.BrokenResourceError | trio.ClosedResourceError):
            log.info("%s: connection lost: %s", peer, leaf.__cause__ or leaf)
        elif isinstance(leaf, OSError):
            log.info("%s: socket error: %s", peer, leaf)
        else:
            log.error("%s: internal error, closing this connection", peer, exc_info=leaf)


def format_address(addr: object) -> str:
    """host:port for an IP address tuple, the path for a unix socket."""
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


@contextlib.asynccontextmanager
async def running_server(server: Server) -> AsyncIterator[list[object]]:
    """Serve in a private nursery while the block runs; stop it afterwards."""
    async with trio.open_nursery() as nursery:
        addresses: list[object] = await nursery.start(server.serve)
        try:
            yield addresses
        finally:
            nursery.cancel_scope.cancel()
