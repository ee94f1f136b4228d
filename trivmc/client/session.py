"""A trio SPICE client for the VMC channels (usbredir, port, webdav) of any SPICE server.

    async with trivmc.client.connect("spice://127.0.0.1:5930", password="pw") as session:
        qmp = await session.open_port("org.qemu.monitor.qmp.0")
        await qmp.send_all(b'{"execute": "qmp_capabilities"}')
        print(await qmp.receive_some())

Closing the session closes every channel it opened. What it raises: `errors`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from uuid import UUID

import trio
from trio_util import RepeatedEvent

from .._groups import single_leaf
from ..protocol import (
    ChannelType,
    LinkError,
    MainCap,
    MainChannelsList,
    MainInit,
    MainName,
    MainUuid,
    Message,
    MsgcMain,
    MsgMain,
    ProtocolError,
    VmcCap,
    has_cap,
)
from ..transport import client_tls_context
from .address import Address, parse_uri
from .connection import MessageConnection, link_channel
from .errors import ChannelNotFound, MainChannelClosed, SpiceLinkError
from .migration import MoveKind, Target
from .moves import MIGRATION_MESSAGES, destination_message, migration_message
from .stream import ChannelStream

log = logging.getLogger(__name__)


class Session:
    """A linked main channel and the VMC channels opened through it.

    `name` and `uuid` are the guest's, when the server sent them (MAIN_NAME and
    MAIN_UUID come right after MAIN_INIT, so they are set once `connect` returns)."""

    def __init__(
        self,
        address: Address,
        password: str | None,
        lz4: bool,
        tls: ssl.SSLContext | None = None,
        follow_migration: bool = True,
    ) -> None:
        self.address = address
        self.password = password
        self.tls = tls
        self.lz4 = lz4 and not address.is_unix
        self.session_id = 0
        self.name: str | None = None
        self.uuid: UUID | None = None
        self.channels: list[tuple[int, int]] = []
        self.port_names: dict[int, str] = {}
        self.main: MessageConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._open: set[ChannelStream] = set()
        self._got_list = False
        self._channels_changed = RepeatedEvent()  # set when channels or closed change
        self.closed = False
        self.follow_migration = follow_migration
        self.migrations = 0  # moves completed (docs/migration.md)
        #: how the last move went (None before the first)
        self.last_migration: MoveKind | None = None
        self._migrated = RepeatedEvent()
        self._target: Target | None = None

    @property
    def main_caps(self) -> list[int]:
        """The main channel capabilities this session advertises."""
        caps: list[int] = [MainCap.NAME_AND_UUID]
        if self.follow_migration:  # AGENT_CONNECTED_TOKENS: spice-server's seamless needs it
            caps += [
                MainCap.SEMI_SEAMLESS_MIGRATE,
                MainCap.SEAMLESS_MIGRATE,
                MainCap.AGENT_CONNECTED_TOKENS,
            ]
        return caps

    async def _link_main(self) -> None:
        self.main = await self._new_main(self.address)

    async def _new_main(self, address: Address) -> MessageConnection:
        """Link a new main channel at `address` and set the session up on it: MAIN_INIT,
        ATTACH_CHANNELS, the first CHANNELS_LIST."""
        linked = await link_channel(
            address, 0, ChannelType.MAIN, 0, self.main_caps, self.password, self.tls
        )
        main = MessageConnection(linked, 1 << 20)
        try:
            with trio.fail_after(30):
                init = None
                while init is None:
                    msg = await self._main_message(main, "MAIN_INIT")
                    if msg.type == MsgMain.INIT:
                        init = MainInit.decode(msg.body)
                self.session_id = init.session_id
                await main.send(MsgcMain.ATTACH_CHANNELS)
                self._got_list = False
                while not self._got_list:
                    self._on_main(await self._main_message(main, "CHANNELS_LIST"))
        except BaseException:
            await trio.aclose_forcefully(linked.stream)
            raise
        return main

    async def _main_message(self, main: MessageConnection, waiting_for: str) -> Message:
        msg = await main.receive()
        if msg is None:
            raise MainChannelClosed(f"server closed the main channel before {waiting_for}")
        return msg

    def _on_main(self, msg: Message) -> None:
        if msg.type == MsgMain.CHANNELS_LIST:
            self._got_list = True
            for entry in MainChannelsList.decode(msg.body).channels:
                if entry not in self.channels:
                    self.channels.append(entry)
                if entry[0] == ChannelType.PORT:  # (re)announced: its name is asked again
                    self.port_names.pop(entry[1], None)
            self._channels_changed.set()
        elif msg.type == MsgMain.NAME:
            self.name = MainName.decode(msg.body).text
        elif msg.type == MsgMain.UUID:
            self.uuid = MainUuid.decode(msg.body).as_uuid()

    @property
    def channel_list(self) -> list[tuple[int, int]]:
        """The (type, id) of every channel the server has offered this session so far:
        the first CHANNELS_LIST and every channel announced since (SPICE has no message
        that withdraws one; a link to a channel gone since is refused)."""
        return list(self.channels)

    async def wait_channel(
        self, channel_type: int, channel_id: int | None = None
    ) -> tuple[int, int]:
        """Wait until the server offers a channel of `channel_type` (with `channel_id`,
        or any id) and return its (type, id). Raises ClosedResourceError if the session
        closes first."""
        while True:
            for entry in self.channels:
                if entry[0] == channel_type and channel_id in (None, entry[1]):
                    return entry
            if self.closed:
                raise trio.ClosedResourceError("the session closed")
            await self._channels_changed.wait()

    async def _main_loop(self) -> None:
        assert self.main is not None
        await self._read_main(self.main)

    async def _read_main(
        self,
        conn: MessageConnection,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read one main connection until it ends or its role does (the session moved
        away from it). The end of the session's current main channel ends the session;
        the end of a destination's, before the switch, only ends that move."""
        task_status.started()
        try:
            while True:
                msg = await conn.receive()
                if msg is None:
                    log.info("server closed the main channel")
                    break
                if not await self._on_main_message(conn, msg):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError) as e:
            log.info("main channel lost: %s", e)
        finally:
            target = self._target
            if conn is self.main:
                self._close_all("the session's main channel closed")
            elif target is not None and conn is target.main and not target.connected:
                target.lost = True  # the link task reports it to the source
                target.answered.set()
            elif target is not None and conn is target.main:
                await self._drop_target("the destination closed its main channel")

    def _close_all(self, why: str) -> None:
        self.closed = True
        self._channels_changed.set()
        self._migrated.set()
        for ch in list(self._open):
            ch.connection_lost(why)

    async def _on_main_message(self, conn: MessageConnection, msg: Message) -> bool:
        """Handle one main message of `conn`; False when `conn` is no longer read."""
        target = self._target
        if target is not None and conn is target.main:
            await destination_message(self, target, msg)
            return True
        if not self.follow_migration or msg.type not in MIGRATION_MESSAGES:
            self._on_main(msg)
            return True
        return await migration_message(self, conn, msg)

    def _moved(self, kind: MoveKind) -> None:
        self.migrations += 1
        self.last_migration = kind
        log.info("session moved (%s) to %s", kind.value, self.address.host)
        self._migrated.set()

    def _channel_moved(self, ch: ChannelStream) -> None:
        """A channel switched itself to the destination (its MIGRATE: seamless)."""
        target = self._target
        if target is None or not target.seamless_ok:
            return
        target.waiting.discard(ch)
        target.channels.pop(ch, None)
        self._seamless_done(target)

    def _seamless_done(self, target: Target) -> None:
        """Count a seamless move once main and every channel switched (once only: the
        last of them may finish while another still awaits its own switch)."""
        if self._target is target and not target.waiting and target.main is self.main:
            self._target = None
            self._moved(MoveKind.SEAMLESS)

    def _channel_closed(self, ch: ChannelStream) -> None:
        """The application closed `ch`: a move under way forgets it too."""
        self._open.discard(ch)
        target = self._target
        if target is None:
            return
        moved = target.channels.pop(ch, None)
        if moved is not None and self._nursery is not None:
            self._nursery.start_soon(trio.aclose_forcefully, moved[0].stream)
        if ch in target.waiting:
            target.waiting.discard(ch)
            self._seamless_done(target)

    async def _drop_target(self, why: str) -> None:
        target, self._target = self._target, None
        if target is not None:
            log.info("migration dropped: %s", why)
            await target.aclose()

    async def wait_migrated(self, after: int | None = None) -> int:
        """Wait until more than `after` moves completed (default: the count now), and
        return the count. Raises ClosedResourceError when the session closes first."""
        after = self.migrations if after is None else after
        while self.migrations <= after:
            if self.closed:
                raise trio.ClosedResourceError("the session closed")
            await self._migrated.wait()
        return self.migrations

    def _has(self, channel_type: int, channel_id: int) -> bool:
        return (channel_type, channel_id) in self.channels

    async def open_channel(self, channel_type: int, channel_id: int) -> ChannelStream:
        """Link a VMC channel of this session and return it as a trio stream. Raises
        ChannelNotFound when the server never offered it, SpiceLinkError when it
        refuses the link, trio.ClosedResourceError once the session is closed."""
        if self._nursery is None or self.closed:
            raise trio.ClosedResourceError("the session is closed")
        if not self._has(channel_type, channel_id):
            raise ChannelNotFound(f"the server lists no channel {channel_type}:{channel_id}")
        caps = [VmcCap.DATA_COMPRESS_LZ4] if self.lz4 else []
        linked = await link_channel(
            self.address, self.session_id, channel_type, channel_id, caps, self.password, self.tls
        )
        lz4_out = self.lz4 and has_cap(linked.peer_channel_caps, VmcCap.DATA_COMPRESS_LZ4)
        channel = ChannelStream(
            MessageConnection(linked),
            channel_type,
            channel_id,
            lz4_out=lz4_out,
            is_unix=self.address.is_unix,
            on_close=self._channel_closed,
            on_moved=self._channel_moved,
        )
        self._open.add(channel)
        await self._nursery.start(channel.run)
        return channel

    async def open_usbredir(self, channel_id: int = 0) -> ChannelStream:
        """`open_channel` for usbredir channel `channel_id`; raises as it does."""
        return await self.open_channel(ChannelType.USBREDIR, channel_id)

    async def open_webdav(self) -> ChannelStream:
        """`open_channel` for the webdav channel; raises as it does."""
        return await self.open_channel(ChannelType.WEBDAV, 0)

    async def open_port(self, name: str) -> ChannelStream:
        """Open the port channel whose PORT_INIT carries `name`: one known to carry it
        first, then those whose name is not known yet, in id order. A non-matching one
        is closed again; one the server closes before PORT_INIT (another session's
        client holds it) or refuses (removed since it was listed) is skipped. Raises
        ChannelNotFound when no port carries `name`."""
        ports = sorted(cid for t, cid in self.channels if t == ChannelType.PORT)
        known = [cid for cid in ports if self.port_names.get(cid) == name]
        ids = known + [cid for cid in ports if cid not in self.port_names]
        busy = 0
        for cid in ids:
            try:
                channel = await self.open_channel(ChannelType.PORT, cid)
            except SpiceLinkError as e:
                if e.code != LinkError.CHANNEL_NOT_AVAILABLE:
                    raise
                self.port_names.pop(cid, None)  # gone: asked again if it comes back
                continue
            try:
                with trio.fail_after(30):
                    port_name = await channel.wait_port_init()
            except trio.BrokenResourceError:
                busy += 1  # closed at once: the port has another client
                await channel.aclose()
                continue
            self.port_names[cid] = port_name
            if port_name == name:
                return channel
            await channel.aclose()
        why = f" ({busy} port(s) busy with another client)" if busy else ""
        raise ChannelNotFound(f"no port channel named {name!r}{why}")

    async def aclose(self) -> None:
        """Close every channel and the main channel."""
        for ch in list(self._open):
            await ch.aclose()
        await self._drop_target("the session closes")
        if self.main is not None:
            await trio.aclose_forcefully(self.main.stream)
        self.closed = True


@contextlib.asynccontextmanager
async def connect(
    uri: str,
    password: str | None = None,
    *,
    lz4: bool = True,
    tls_port: int | None = None,
    ca_file: str | None = None,
    tls: ssl.SSLContext | None = None,
    follow_migration: bool = True,
) -> AsyncIterator[Session]:
    """Link the main channel of the server at `uri` (see `parse_uri`); yield the
    Session. On exit every channel it opened is closed. Raises SpiceLinkError when the
    server refuses, MainChannelClosed when it hangs up before the channel list. TLS
    verifies the server certificate and host name against `ca_file` (or the system's
    trust store); `tls` replaces that context entirely. With `follow_migration` (the
    default) the session follows the VM when it migrates (docs/migration.md). The main
    channel's reader and each opened channel's reader run in a nursery `connect` owns:
    all of them end before the `async with` block is left."""
    if tls is None and ca_file is not None:
        tls = client_tls_context(ca_file)
    session = Session(parse_uri(uri, tls_port), password, lz4, tls, follow_migration)
    await session._link_main()
    try:
        async with trio.open_nursery() as nursery:
            session._nursery = nursery
            nursery.start_soon(session._main_loop)
            try:
                yield session
            finally:
                await session.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__  # keeps the cause, hides the group
