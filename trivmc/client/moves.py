"""The source main channel's migration messages, as spice-gtk handles them: BEGIN and
BEGIN_SEAMLESS (link to the destination, then answer the source), END (semi-seamless:
switch after the destination's MAIN_INIT), MIGRATE on main (seamless), CANCEL and
SWITCH_HOST (reconnect from scratch). The session (session.py) calls
`migration_message`; docs/migration.md describes the paths and what applications see.
"""

from __future__ import annotations

import logging
import ssl
from typing import Protocol

import trio

from ..protocol import (
    MainInit,
    MainMigrateBegin,
    MainMigrateBeginSeamless,
    MainMigrateSwitchHost,
    Message,
    Migrate,
    MigrateFlags,
    MigrationDstInfo,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgMain,
    ProtocolError,
    VmcCap,
    has_cap,
)
from .address import Address
from .connection import MessageConnection, link_channel
from .errors import SpiceLinkError
from .migration import MoveKind, Target, destination, link_target
from .stream import ChannelStream

log = logging.getLogger(__name__)

MIGRATION_MESSAGES = frozenset(
    {
        MsgCommon.MIGRATE,
        MsgMain.MIGRATE_BEGIN,
        MsgMain.MIGRATE_BEGIN_SEAMLESS,
        MsgMain.MIGRATE_END,
        MsgMain.MIGRATE_CANCEL,
        MsgMain.MIGRATE_SWITCH_HOST,
    }
)
_FAILURES = (
    OSError,
    SpiceLinkError,
    ProtocolError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class MovingSession(Protocol):
    """What of a `Session` the migration handlers use."""

    address: Address
    password: str | None
    tls: ssl.SSLContext | None
    lz4: bool
    session_id: int
    main: MessageConnection | None
    channels: list[tuple[int, int]]
    port_names: dict[int, str]
    _target: Target | None
    _open: set[ChannelStream]
    _nursery: trio.Nursery | None

    @property
    def main_caps(self) -> list[int]: ...

    async def _new_main(self, address: Address) -> MessageConnection: ...

    async def _read_main(
        self,
        conn: MessageConnection,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...

    async def _drop_target(self, why: str) -> None: ...

    def _moved(self, kind: MoveKind) -> None: ...

    def _seamless_done(self, target: Target) -> None: ...

    def _close_all(self, why: str) -> None: ...

    def _on_main(self, msg: Message) -> None: ...


async def migration_message(s: MovingSession, source: MessageConnection, msg: Message) -> bool:
    """Handle a migration message of the source's main channel; False when the session
    left `source` (it is closed then)."""
    if msg.type in (MsgMain.MIGRATE_BEGIN, MsgMain.MIGRATE_BEGIN_SEAMLESS):
        await _begin(s, source, msg)
        return True
    if msg.type == MsgMain.MIGRATE_CANCEL:
        await s._drop_target("MIGRATE_CANCEL from the source")
        return True
    if msg.type == MsgMain.MIGRATE_END:
        return await _end(s, source)
    if msg.type == MsgCommon.MIGRATE:
        return await _main_migrate(s, source, Migrate.decode(msg.body))
    assert msg.type == MsgMain.MIGRATE_SWITCH_HOST
    return await _switch_host(s, source, MainMigrateSwitchHost.decode(msg.body).dst)


async def destination_message(s: MovingSession, target: Target, msg: Message) -> None:
    """A message of the destination's main channel before the switch."""
    if msg.type in (MsgMain.MIGRATE_DST_SEAMLESS_ACK, MsgMain.MIGRATE_DST_SEAMLESS_NACK):
        target.seamless_ok = msg.type == MsgMain.MIGRATE_DST_SEAMLESS_ACK
        target.answered.set()
    elif msg.type == MsgMain.INIT and target.ending:
        await _finish_semi_seamless(s, target, MainInit.decode(msg.body))
    else:
        s._on_main(msg)


async def _finish_semi_seamless(s: MovingSession, target: Target, init: MainInit) -> None:
    """MAIN_INIT from the destination after MIGRATE_END: its channels are live now."""
    s.session_id = init.session_id
    assert target.main is not None
    s.main = target.main
    for ch in list(s._open):
        moved = target.channels.pop(ch, None)
        if moved is None:
            ch.connection_lost("the channel was not linked to the migration destination")
        else:
            await ch.switch_to(*moved)
    s._target = None
    await target.close_connections(main=False)  # of channels closed meanwhile
    s._moved(MoveKind.SEMI_SEAMLESS)


async def _begin(s: MovingSession, source: MessageConnection, msg: Message) -> None:
    if msg.type == MsgMain.MIGRATE_BEGIN:
        dst, seamless, version = MainMigrateBegin.decode(msg.body).dst, False, 0
    else:
        begin = MainMigrateBeginSeamless.decode(msg.body)
        dst, seamless, version = begin.dst, True, begin.src_version
    await s._drop_target("a new MIGRATE_BEGIN")
    try:
        address = destination(dst)
    except ValueError as e:
        log.warning("migration: %s", e)
        await source.send(MsgcMain.MIGRATE_CONNECT_ERROR)
        return
    log.info("migration begins (%s) to %s", "seamless" if seamless else "semi", dst.host_text)
    target = Target(address, seamless, version)
    s._target = target
    assert s._nursery is not None
    s._nursery.start_soon(_connect, s, source, target)


async def _connect(s: MovingSession, source: MessageConnection, target: Target) -> None:
    nursery = s._nursery
    assert nursery is not None

    async def start_reader(conn: MessageConnection) -> None:
        await nursery.start(s._read_main, conn)

    with target.scope:
        reply = await link_target(
            target,
            s.session_id,
            s.main_caps,
            list(s._open),
            s.lz4,
            s.password,
            s.tls,
            start_reader,
        )
        if reply == MsgcMain.MIGRATE_CONNECT_ERROR and s._target is target:
            s._target = None
        try:
            await source.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.info("migration: the source is gone: %s", e)


async def _end(s: MovingSession, source: MessageConnection) -> bool:
    """MIGRATE_END (semi-seamless): hold every channel's sends, make the destination's
    main the session's and tell it MIGRATE_END; its MAIN_INIT switches the channels."""
    target = s._target
    if target is None or not target.connected or target.main is None:
        log.warning("migration: MIGRATE_END with no destination linked: ignored")
        return True
    target.ending = True
    for ch in list(s._open):
        await ch.hold_sends()
    s.main = target.main
    s.address = target.address
    await target.main.send(MsgcMain.MIGRATE_END)
    await trio.aclose_forcefully(source.stream)
    return False


async def _main_migrate(s: MovingSession, source: MessageConnection, mig: Migrate) -> bool:
    """MIGRATE on the main channel (seamless): flush mark, the source's MIGRATE_DATA,
    which goes to the destination's main, now the session's."""
    target = s._target
    if mig.flags & MigrateFlags.NEED_FLUSH:
        await source.send(MsgcCommon.MIGRATE_FLUSH_MARK)
    data: Message | None = None
    while mig.flags & MigrateFlags.NEED_DATA_TRANSFER:
        # what the source sent before the flush mark reached it is handled as usual
        data = await source.receive()
        if data is None:
            raise ProtocolError("main: MIGRATE not followed by MIGRATE_DATA")
        if data.type == MsgCommon.MIGRATE_DATA:
            break
        if data.type in MIGRATION_MESSAGES:
            raise ProtocolError(f"main: message {data.type} between MIGRATE and MIGRATE_DATA")
        s._on_main(data)
    if target is None or target.main is None or not target.seamless_ok:
        log.warning("migration: MIGRATE on main with no seamless destination")
        return True  # nowhere to go: the source's end will end the session
    if data is not None:
        await target.main.send(MsgcCommon.MIGRATE_DATA, bytes(data.body))
    s.main = target.main
    s.address = target.address
    await trio.aclose_forcefully(source.stream)
    s._seamless_done(target)
    return False


async def _switch_host(s: MovingSession, source: MessageConnection, dst: MigrationDstInfo) -> bool:
    """SWITCH_HOST: the move is over before the client linked; link a new session at the
    destination and reopen every open channel there (same type and id)."""
    await s._drop_target("SWITCH_HOST")
    channels = list(s._open)
    for ch in channels:
        await ch.hold_sends()
    try:
        address = destination(dst)
        s.channels.clear()
        s.port_names.clear()
        main = await s._new_main(address)
    except (ValueError, *_FAILURES) as e:
        s._close_all(f"switching to {dst.host_text} failed: {e}")
        await trio.aclose_forcefully(source.stream)
        return False
    s.main = main
    s.address = address
    assert s._nursery is not None
    await s._nursery.start(s._read_main, main)
    await trio.aclose_forcefully(source.stream)
    caps = [VmcCap.DATA_COMPRESS_LZ4] if s.lz4 else []
    for ch in channels:
        try:
            linked = await link_channel(
                address, s.session_id, ch.channel_type, ch.channel_id, caps, s.password, s.tls
            )
        except _FAILURES as e:
            ch.connection_lost(f"reopening the channel at {dst.host_text} failed: {e}")
            continue
        lz4_out = s.lz4 and has_cap(linked.peer_channel_caps, VmcCap.DATA_COMPRESS_LZ4)
        await ch.switch_to(MessageConnection(linked), lz4_out)
    s._moved(MoveKind.SWITCH_HOST)
    return False
