"""The client follows a migration, message by message, against scripted servers on
loopback (tests/client/fake_spice.py): semi-seamless, seamless, SWITCH_HOST, CANCEL and
a destination that cannot be reached. The same paths against two real QEMUs:
tests/interop/test_client_migration.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from trivmc.client import ChannelStream, Session, connect
from trivmc.client.migration import MoveKind
from trivmc.protocol import (
    MainChannelsList,
    MainInit,
    MainMigrateBegin,
    MainMigrateBeginSeamless,
    MainMigrateDstDoSeamless,
    MainMigrateSwitchHost,
    MainName,
    Migrate,
    MigrationDstInfo,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgMain,
)
from trivmc.protocol.constants import MainCap

from .fake_spice import FakeSpice, Linked

SID = 0x8000_0001  # above 2**31, as spice-server's ids are
PORT = (10, 0)
DATA = 101


async def play_main(server: FakeSpice, session_id: int) -> Linked:
    """The server's side of a new session: MAIN_INIT, then the list on ATTACH."""
    main = await server.next_link((1, 0))
    await main.send(MsgMain.INIT, MainInit(session_id).encode())
    await main.expect(MsgcMain.ATTACH_CHANNELS)
    await main.send(MsgMain.CHANNELS_LIST, MainChannelsList((PORT,)).encode())
    return main


@dataclass
class Setup:
    session: Session
    src: FakeSpice
    dst: FakeSpice
    smain: Linked
    sport: Linked
    ch: ChannelStream

    def dst_info(self) -> MigrationDstInfo:
        return MigrationDstInfo(self.dst.port, 0, b"127.0.0.1")


@asynccontextmanager
async def session_on_source() -> AsyncIterator[Setup]:
    src, dst = FakeSpice(), FakeSpice()
    async with trio.open_nursery() as nursery:
        await nursery.start(src.serve)
        await nursery.start(dst.serve)
        mains: list[Linked] = []

        async def server_main() -> None:
            mains.append(await play_main(src, SID))

        nursery.start_soon(server_main)
        async with connect(f"spice://127.0.0.1:{src.port}") as session:
            ch = await session.open_channel(*PORT)
            sport = await src.next_link(PORT)
            assert sport.mess.connection_id == SID
            setup = Setup(session, src, dst, mains[0], sport, ch)
            caps = setup.smain.mess.channel_caps
            for cap in (MainCap.SEMI_SEAMLESS_MIGRATE, MainCap.SEAMLESS_MIGRATE):
                assert caps[0] & (1 << cap)
            await ch.send_all(b"a")
            assert await sport.data(1) == b"a"
            yield setup
        nursery.cancel_scope.cancel()


async def receive(ch: ChannelStream, n: int) -> bytes:
    got = b""
    with trio.fail_after(10):
        while len(got) < n:
            got += await ch.receive_some()
    return got


async def test_semi_seamless_moves_the_same_stream() -> None:
    async with session_on_source() as s, trio.open_nursery() as nursery:
        await s.smain.send(MsgMain.MIGRATE_BEGIN, MainMigrateBegin(s.dst_info()).encode())
        dmain = await s.dst.next_link((1, 0))
        assert dmain.mess.connection_id == SID
        dport = await s.dst.next_link(PORT)
        assert dport.mess.connection_id == SID
        await s.smain.expect(MsgcMain.MIGRATE_CONNECTED)
        await s.ch.send_all(b"b")  # linked, not moved yet: still the source's
        assert await s.sport.data(1) == b"b"
        await s.sport.send(DATA, b"x")
        assert await receive(s.ch, 1) == b"x"

        got: list[bytes] = []
        read = trio.Event()

        async def blocked_reader() -> None:
            got.append(await receive(s.ch, 2))
            read.set()

        nursery.start_soon(blocked_reader)
        await s.smain.send(MsgMain.MIGRATE_END)
        await dmain.expect(MsgcMain.MIGRATE_END)
        sent = trio.Event()

        async def held_send() -> None:
            await s.ch.send_all(b"c")
            sent.set()

        nursery.start_soon(held_send)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # held until the destination is live
        assert s.session.migrations == 0
        await dmain.send(MsgMain.INIT, MainInit(SID).encode())
        assert await dport.data(1) == b"c"
        await dport.send(DATA, b"yz")
        with trio.fail_after(10):
            await sent.wait()
            assert await s.session.wait_migrated(0) == 1
        assert s.session.last_migration is MoveKind.SEMI_SEAMLESS
        assert s.ch.moves == 1
        assert await s.sport.closed() and await s.smain.closed()
        with trio.fail_after(10):
            await read.wait()
        assert got == [b"yz"]
        await s.ch.send_all(b"d")
        assert await dport.data(1) == b"d"


async def move_main_seamlessly(s: Setup, dmain: Linked, late: bool = False) -> None:
    await s.smain.send(MsgCommon.MIGRATE, Migrate(3).encode())
    await s.smain.expect(MsgcCommon.MIGRATE_FLUSH_MARK)
    if late:  # spice-server goes on sending until the flush mark reaches it
        await s.smain.send(MsgMain.NAME, MainName(b"late vm").encode())
    await s.smain.send(MsgCommon.MIGRATE_DATA, b"main state")
    assert (await dmain.expect(MsgcCommon.MIGRATE_DATA)).body == b"main state"


@pytest.mark.parametrize(("main_first", "late"), [(False, False), (True, False), (False, True)])
async def test_seamless_forwards_migrate_data(main_first: bool, late: bool) -> None:
    """With `late`, the source sends data (and main a NAME) after MIGRATE and before
    MIGRATE_DATA, as spice-server does when its device read meanwhile: it is delivered
    in order, not taken for a protocol error."""
    async with session_on_source() as s, trio.open_nursery() as nursery:
        begin = MainMigrateBeginSeamless(s.dst_info(), 1)
        await s.smain.send(MsgMain.MIGRATE_BEGIN_SEAMLESS, begin.encode())
        dmain = await s.dst.next_link((1, 0))
        ask = await dmain.expect(MsgcMain.MIGRATE_DST_DO_SEAMLESS)
        assert MainMigrateDstDoSeamless.decode(ask.body).src_version == 1
        await dmain.send(MsgMain.MIGRATE_DST_SEAMLESS_ACK)
        dport = await s.dst.next_link(PORT)
        await s.smain.expect(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
        if main_first:
            await move_main_seamlessly(s, dmain)
            assert s.session.migrations == 0  # the port has not moved yet

        await s.sport.send(DATA, b"from the source")
        await s.sport.send(MsgCommon.MIGRATE, Migrate(3).encode())
        await s.sport.expect(MsgcCommon.MIGRATE_FLUSH_MARK)
        sent = trio.Event()

        async def held_send() -> None:
            await s.ch.send_all(b"c")
            sent.set()

        nursery.start_soon(held_send)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        if late:
            await s.sport.send(DATA, b" and late")
        await s.sport.send(MsgCommon.MIGRATE_DATA, b"SVMD port state")
        assert (await dport.expect(MsgcCommon.MIGRATE_DATA)).body == b"SVMD port state"
        assert await dport.data(1) == b"c"  # after the data, never before
        await dport.send(DATA, b" then the destination")
        want = b"from the source" + b" and late" * late + b" then the destination"
        assert await receive(s.ch, len(want)) == want

        if not main_first:
            assert s.session.migrations == 0  # main has not moved yet
            await move_main_seamlessly(s, dmain, late)
        with trio.fail_after(10):
            assert await s.session.wait_migrated(0) == 1
        assert s.session.migrations == 1
        assert s.session.last_migration is MoveKind.SEAMLESS
        assert s.session.name == ("late vm" if late else None)
        assert await s.sport.closed() and await s.smain.closed()


async def test_switch_host_reopens_the_channels() -> None:
    async with session_on_source() as s, trio.open_nursery() as nursery:
        sent = trio.Event()

        async def send_during() -> None:
            await s.ch.send_all(b"c")
            sent.set()

        switch = MainMigrateSwitchHost(s.dst_info())
        await s.smain.send(MsgMain.MIGRATE_SWITCH_HOST, switch.encode())
        dmain = await s.dst.next_link((1, 0))
        assert dmain.mess.connection_id == 0  # from scratch
        nursery.start_soon(send_during)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        await dmain.send(MsgMain.INIT, MainInit(SID + 1).encode())
        await dmain.expect(MsgcMain.ATTACH_CHANNELS)
        await dmain.send(MsgMain.CHANNELS_LIST, MainChannelsList((PORT,)).encode())
        dport = await s.dst.next_link(PORT)
        assert dport.mess.connection_id == SID + 1
        assert await dport.data(1) == b"c"
        await dport.send(DATA, b"y")
        assert await receive(s.ch, 1) == b"y"
        with trio.fail_after(10):
            assert await s.session.wait_migrated(0) == 1
        assert s.session.last_migration is MoveKind.SWITCH_HOST
        assert s.session.session_id == SID + 1
        assert await s.smain.closed() and await s.sport.closed()


async def test_cancel_drops_the_destination() -> None:
    async with session_on_source() as s:
        await s.smain.send(MsgMain.MIGRATE_BEGIN, MainMigrateBegin(s.dst_info()).encode())
        dmain = await s.dst.next_link((1, 0))
        dport = await s.dst.next_link(PORT)
        await s.smain.expect(MsgcMain.MIGRATE_CONNECTED)
        await s.smain.send(MsgMain.MIGRATE_CANCEL)
        with trio.fail_after(10):
            assert await dmain.closed() and await dport.closed()
        await s.ch.send_all(b"z")
        assert await s.sport.data(1) == b"z"
        assert s.session.migrations == 0


async def test_unreachable_destination_is_a_connect_error() -> None:
    async with session_on_source() as s:
        info = MigrationDstInfo(1, 0, b"127.0.0.1")  # nothing listens on port 1
        await s.smain.send(MsgMain.MIGRATE_BEGIN, MainMigrateBegin(info).encode())
        await s.smain.expect(MsgcMain.MIGRATE_CONNECT_ERROR)
        await s.ch.send_all(b"z")
        assert await s.sport.data(1) == b"z"
        assert s.session.migrations == 0


async def test_a_channel_closed_during_a_seamless_move() -> None:
    """The move completes without the channel the application closed meanwhile, and
    that channel's destination connection is closed too."""
    async with session_on_source() as s:
        begin = MainMigrateBeginSeamless(s.dst_info(), 1)
        await s.smain.send(MsgMain.MIGRATE_BEGIN_SEAMLESS, begin.encode())
        dmain = await s.dst.next_link((1, 0))
        await dmain.expect(MsgcMain.MIGRATE_DST_DO_SEAMLESS)
        await dmain.send(MsgMain.MIGRATE_DST_SEAMLESS_ACK)
        dport = await s.dst.next_link(PORT)
        await s.smain.expect(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
        await s.ch.aclose()
        assert await dport.closed() and await s.sport.closed()
        await s.smain.send(MsgCommon.MIGRATE, Migrate(3).encode())
        await s.smain.expect(MsgcCommon.MIGRATE_FLUSH_MARK)
        await s.smain.send(MsgCommon.MIGRATE_DATA, b"main state")
        await dmain.expect(MsgcCommon.MIGRATE_DATA)
        with trio.fail_after(10):
            assert await s.session.wait_migrated(0) == 1
        assert s.session.last_migration is MoveKind.SEAMLESS


async def test_switch_host_while_linking_to_the_destination() -> None:
    """QEMU's SWITCH_HOST case: the move completes while the client is still linking
    (here to a listener that never answers); the link is abandoned, no late
    MIGRATE_CONNECTED is sent, and the session starts over at the destination."""
    async with session_on_source() as s, trio.open_nursery() as nursery:
        silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        accepted: list[trio.SocketStream] = []
        got_one = trio.Event()

        async def hold(conn: trio.SocketStream) -> None:
            accepted.append(conn)
            got_one.set()
            await trio.sleep_forever()

        nursery.start_soon(trio.serve_listeners, hold, [silent])
        info = MigrationDstInfo(silent.socket.getsockname()[1], 0, b"127.0.0.1")
        await s.smain.send(MsgMain.MIGRATE_BEGIN, MainMigrateBegin(info).encode())
        with trio.fail_after(10):
            await got_one.wait()
        switch = MainMigrateSwitchHost(s.dst_info())
        await s.smain.send(MsgMain.MIGRATE_SWITCH_HOST, switch.encode())
        dmain = await play_main(s.dst, SID + 1)
        assert dmain.mess.connection_id == 0
        dport = await s.dst.next_link(PORT)
        await s.ch.send_all(b"c")
        assert await dport.data(1) == b"c"
        with trio.fail_after(10):
            assert await s.session.wait_migrated(0) == 1
        assert s.session.last_migration is MoveKind.SWITCH_HOST
        rest = await s.smain.rest()  # what the source got after SWITCH_HOST
        assert set(rest) <= {MsgcCommon.PONG}, rest
        with trio.fail_after(10):  # the abandoned link was closed
            while await accepted[0].receive_some(65536):
                pass
        nursery.cancel_scope.cancel()


async def test_seamless_refused_by_the_destination_goes_semi_seamless() -> None:
    async with session_on_source() as s:
        begin = MainMigrateBeginSeamless(s.dst_info(), 99)
        await s.smain.send(MsgMain.MIGRATE_BEGIN_SEAMLESS, begin.encode())
        dmain = await s.dst.next_link((1, 0))
        await dmain.expect(MsgcMain.MIGRATE_DST_DO_SEAMLESS)
        await dmain.send(MsgMain.MIGRATE_DST_SEAMLESS_NACK)
        dport = await s.dst.next_link(PORT)
        await s.smain.expect(MsgcMain.MIGRATE_CONNECTED)  # not _SEAMLESS
        assert s.ch.migration_target is None
        await s.smain.send(MsgMain.MIGRATE_END)
        await dmain.expect(MsgcMain.MIGRATE_END)
        await dmain.send(MsgMain.INIT, MainInit(SID).encode())
        with trio.fail_after(10):
            assert await s.session.wait_migrated(0) == 1
        assert s.session.last_migration is MoveKind.SEMI_SEAMLESS
        await s.ch.send_all(b"d")
        assert await dport.data(1) == b"d"
