"""The main channel as a migration source and target, two trivmc servers in one trio
run over loopback: trivmc's client follows `Server.migrate_sessions` seamlessly with
every byte once and in order; raw clients see the fallbacks (SWITCH_HOST, MIGRATE_END,
MIGRATE_CANCEL) and the target's rules (no MAIN_INIT, DO_SEAMLESS ACK / NACK, main
MIGRATE_DATA only after an ACK, VMC links held until the path is known)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from trivmc.client import connect
from trivmc.protocol import (
    ChannelType,
    MainCap,
    MainChannelsList,
    MainInit,
    MainMigrateBegin,
    MainMigrateBeginSeamless,
    MainMigrateData,
    MainMigrateDstDoSeamless,
    MainMigrateSwitchHost,
    Migrate,
    MigrationDstInfo,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgcVmc,
    MsgMain,
    MsgVmc,
)
from trivmc.server import MigrationOutcome, Server, ServerConfig
from trivmc.server.metrics import ServerCollector

from .conftest import Peer
from .test_migration_e2e import link, settle
from .test_vmc_migration import GateBackend

PORT = "org.trivmc.mainmig.0"
SEAMLESS_CAPS = [
    MainCap.SEMI_SEAMLESS_MIGRATE,
    MainCap.AGENT_CONNECTED_TOKENS,
    MainCap.SEAMLESS_MIGRATE,
]


def config(multi_session: bool = False) -> ServerConfig:
    return ServerConfig(
        listen=[("127.0.0.1", 0)], key_pool_size=4, key_process=False, multi_session=multi_session
    )


def dst_of(addresses: list[object]) -> MigrationDstInfo:
    address = addresses[0]
    assert isinstance(address, tuple)
    return MigrationDstInfo(port=address[1], sport=0, host=str(address[0]).encode())


async def main_link(address: object, caps: Sequence[int]) -> tuple[Peer, int]:
    peer = await link(address, ChannelType.MAIN, 0, caps)
    (init,) = await peer.receive()
    assert init.type == MsgMain.INIT
    return peer, MainInit.decode(init.body).session_id


async def test_trivmc_client_follows_a_seamless_move_every_byte_once_in_order() -> None:
    src_backend, tgt_backend = GateBackend(room=5000), GateBackend()
    a, b = Server(config()), Server(config())
    src_channel = a.add_port(PORT, src_backend)
    tgt_channel = b.add_port(PORT, tgt_backend)
    before = [bytes([65 + i % 26]) * 997 for i in range(30)]
    during = [bytes([48 + i % 10]) * 311 for i in range(60)]
    after = [bytes([97 + i % 26]) * 501 for i in range(30)]
    async with a as a_addrs, b as b_addrs:
        a_addr = a_addrs[0]
        assert isinstance(a_addr, tuple)
        async with connect(f"spice://{a_addr[0]}:{a_addr[1]}") as session:
            ch = await session.open_port(PORT)
            for chunk in before:
                await ch.send_all(chunk)
            await settle(lambda: src_channel.device.stats.in_data == sum(map(len, before)))
            sid = session.session_id
            assert a.main_clients_of(sid) is not None
            assert a.session_channels(sid) == [src_channel]
            b.expect_migration(sid)

            async def keep_sending() -> None:
                for chunk in during:
                    await ch.send_all(chunk)
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending)
                outcomes = await a.migrate_sessions(dst_of(b_addrs), connect_timeout=10)
            assert outcomes == {sid: MigrationOutcome.SEAMLESS}
            with trio.fail_after(10):
                await session.wait_migrated(after=0)
            assert session.session_id == sid
            for chunk in after:
                await ch.send_all(chunk)
            total = sum(map(len, before + during + after))
            await settle(lambda: len(src_backend.data) + len(tgt_backend.data) == total)
            # the target's main took MIGRATE_DATA and is attached: a new channel reaches it
            assert b.migrations_in == {MigrationOutcome.SEAMLESS: 1}
            (b_main,) = b.main_clients
            assert b_main.attached and b_main.migrated_in.is_set()
            late = b.add_port("org.trivmc.mainmig.late", GateBackend())
            assert late.key not in session.channels
            await settle(lambda: late.key in session.channels)
        await settle(lambda: not len(a.sessions) and not len(b.sessions))
        await settle(lambda: src_channel.client is None and tgt_channel.client is None)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert bytes(src_backend.data) == b"".join(before)[:5000]
    assert bytes(src_backend.data + tgt_backend.data) == b"".join(before + during + after)
    s, t = src_channel.device, tgt_channel.device
    assert s.idle and t.idle
    assert s.stats.migrated_out == t.stats.migrated_in > 0
    assert s.stats.dropped == t.stats.dropped == 0
    assert a.migrations_out == {MigrationOutcome.SEAMLESS: 1}


async def test_fallbacks_switch_host_end_and_late_answers() -> None:
    """No migration caps: SWITCH_HOST at once (NONE). Semi-seamless: BEGIN, CONNECTED,
    MIGRATE_END. Seamless caps but no answer in time: SWITCH_HOST (FAILED), and the
    late CONNECTED_SEAMLESS is answered MIGRATE_CANCEL."""
    a, b = Server(config(multi_session=True)), Server(config())
    async with a as a_addrs, b as b_addrs:
        dst = dst_of(b_addrs)
        plain, plain_sid = await main_link(a_addrs[0], [])
        semi, semi_sid = await main_link(a_addrs[0], [MainCap.SEMI_SEAMLESS_MIGRATE])
        mute, mute_sid = await main_link(a_addrs[0], SEAMLESS_CAPS)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def semi_client() -> None:
                    (begin,) = await semi.receive()
                    assert begin.type == MsgMain.MIGRATE_BEGIN
                    assert MainMigrateBegin.decode(begin.body).dst == dst
                    await semi.send(MsgcMain.MIGRATE_CONNECTED)

                nursery.start_soon(semi_client)
                outcomes = await a.migrate_sessions(dst, connect_timeout=0.3, leave_timeout=None)
        assert outcomes == {
            plain_sid: MigrationOutcome.NONE,
            semi_sid: MigrationOutcome.SEMI_SEAMLESS,
            mute_sid: MigrationOutcome.FAILED,
        }
        (switch,) = await plain.receive()
        assert switch.type == MsgMain.MIGRATE_SWITCH_HOST
        assert MainMigrateSwitchHost.decode(switch.body).dst == dst
        (end,) = await semi.receive()
        assert end.type == MsgMain.MIGRATE_END
        begin, switch = await mute.receive(2)
        assert begin.type == MsgMain.MIGRATE_BEGIN_SEAMLESS
        assert MainMigrateBeginSeamless.decode(begin.body).src_version == 1
        assert switch.type == MsgMain.MIGRATE_SWITCH_HOST
        await mute.send(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
        (cancel,) = await mute.receive()
        assert cancel.type == MsgMain.MIGRATE_CANCEL
        await mute.send(MsgcMain.MIGRATE_CONNECT_ERROR)  # a late error: nothing to cancel
        assert a.migrations_out == {
            MigrationOutcome.NONE: 1,
            MigrationOutcome.SEMI_SEAMLESS: 1,
            MigrationOutcome.FAILED: 1,
        }
        samples = {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in ServerCollector(a).collect()
            for sample in family.samples
        }
        for outcome, count in (("seamless", 0), ("semi-seamless", 1), ("failed", 1), ("none", 1)):
            assert samples[("trivmc_migrations_out_total", (outcome,))] == count
        assert samples[("trivmc_migrations_in_total", ("seamless",))] == 0
        for peer in (plain, semi, mute):
            await peer.stream.aclose()
        await settle(lambda: not len(a.sessions))


async def test_a_client_that_stays_after_the_move_is_disconnected() -> None:
    a = Server(config())
    async with a as a_addrs:
        peer, sid = await main_link(a_addrs[0], [])
        dst = MigrationDstInfo(5900, 0, b"example.invalid")
        with trio.fail_after(10):
            outcomes = await a.migrate_sessions(dst, connect_timeout=1, leave_timeout=0.2)
        assert outcomes == {sid: MigrationOutcome.NONE}
        assert not len(a.sessions)  # closed when migrate_sessions returned
        (switch,) = await peer.expect_closed()
        assert switch.type == MsgMain.MIGRATE_SWITCH_HOST


async def test_a_client_gone_before_its_flush_mark_does_not_hold_the_move() -> None:
    a = Server(config())
    async with a as a_addrs:
        peer, sid = await main_link(a_addrs[0], SEAMLESS_CAPS)
        dst = MigrationDstInfo(5900, 0, b"example.invalid")

        async def client() -> None:
            (begin,) = await peer.receive()
            assert begin.type == MsgMain.MIGRATE_BEGIN_SEAMLESS
            await peer.send(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
            (mig,) = await peer.receive()
            assert mig.type == MsgCommon.MIGRATE
            await peer.stream.aclose()  # gone instead of the flush mark

        with trio.fail_after(5):  # far below step_timeout and leave_timeout
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                outcomes = await a.migrate_sessions(dst, connect_timeout=5)
        assert outcomes == {sid: MigrationOutcome.SEAMLESS}
        assert not len(a.sessions)


async def test_cancel_after_connected() -> None:
    a = Server(config())
    async with a as a_addrs:
        peer, sid = await main_link(a_addrs[0], SEAMLESS_CAPS)
        main = a.main_clients_of(sid)
        assert main is not None and a.main_clients_of(sid + 1) is None
        dst = MigrationDstInfo(5900, 0, b"example.invalid")
        main.begin_migration(dst)
        (begin,) = await peer.receive()
        assert begin.type == MsgMain.MIGRATE_BEGIN_SEAMLESS
        await peer.send(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
        with trio.fail_after(10):
            assert await main.wait_migration_connected() is MigrationOutcome.SEAMLESS
        main.cancel_migration()
        (cancel,) = await peer.receive()
        assert cancel.type == MsgMain.MIGRATE_CANCEL
        with pytest.raises(RuntimeError, match="no migration to complete"):
            await main.complete_migration()
        await peer.stream.aclose()
        await settle(lambda: not len(a.sessions))


async def test_the_seamless_source_main_sends_migrate_then_mnmd_after_the_flush_mark() -> None:
    a = Server(config())
    async with a as a_addrs:
        peer, sid = await main_link(a_addrs[0], SEAMLESS_CAPS)
        main = a.main_clients_of(sid)
        assert main is not None
        main.begin_migration(MigrationDstInfo(5900, 0, b"example.invalid"))
        await peer.receive()
        await peer.send(MsgcMain.MIGRATE_CONNECTED_SEAMLESS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(main.complete_migration)
            (mig,) = await peer.receive()
            assert mig.type == MsgCommon.MIGRATE and Migrate.decode(mig.body).flags == 3
            await trio.testing.wait_all_tasks_blocked()
            assert not peer._got  # nothing before the flush mark
            await peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await peer.receive()
        assert data.type == MsgCommon.MIGRATE_DATA
        assert data.body == MainMigrateData().encode()
        await peer.stream.aclose()
        await settle(lambda: not len(a.sessions))


async def test_target_refuses_main_migrate_data_without_an_ack() -> None:
    b = Server(config())
    async with b as addrs:
        b.expect_migration(0x5678)
        main = await link(addrs[0], ChannelType.MAIN, 0x5678, SEAMLESS_CAPS)
        await main.send(MsgcCommon.MIGRATE_DATA, MainMigrateData().encode())
        assert await main.expect_closed() == []  # no MAIN_INIT, then closed
        await settle(lambda: not len(b.sessions))


async def test_target_refuses_bad_main_migrate_data_and_a_second_one() -> None:
    b = Server(config())
    async with b as addrs:
        for bad in (b"XXXX" + MainMigrateData().encode()[4:], MainMigrateData(version=9).encode()):
            b.expect_migration(0x5678)
            main = await link(addrs[0], ChannelType.MAIN, 0x5678, SEAMLESS_CAPS)
            await main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(1).encode())
            (ack,) = await main.receive()
            assert ack.type == MsgMain.MIGRATE_DST_SEAMLESS_ACK
            await main.send(MsgcCommon.MIGRATE_DATA, bad)
            assert await main.expect_closed() == []
            await settle(lambda: not len(b.sessions))
        b.expect_migration(0x5678)
        main = await link(addrs[0], ChannelType.MAIN, 0x5678, SEAMLESS_CAPS)
        await main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(1).encode())
        await main.send(MsgcCommon.MIGRATE_DATA, MainMigrateData().encode())
        await main.send(MsgcMain.ATTACH_CHANNELS)  # the main channel works as usual now
        ack, channels = await main.receive(2)
        assert ack.type == MsgMain.MIGRATE_DST_SEAMLESS_ACK
        assert channels.type == MsgMain.CHANNELS_LIST
        assert MainChannelsList.decode(channels.body).channels == ()
        assert b.migrations_in == {MigrationOutcome.SEAMLESS: 1}
        await main.send(MsgcCommon.MIGRATE_DATA, MainMigrateData().encode())  # once only
        assert await main.expect_closed() == []
        await settle(lambda: not len(b.sessions))


async def test_semi_seamless_target_nack_holds_vmc_links_until_migrate_end() -> None:
    backend = GateBackend()
    b = Server(config())
    channel = b.add_port(PORT, backend)
    async with b as addrs:
        b.expect_migration(0x9ABC)
        main = await link(addrs[0], ChannelType.MAIN, 0x9ABC, [MainCap.SEMI_SEAMLESS_MIGRATE])
        await main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(2).encode())
        (nack,) = await main.receive()
        assert nack.type == MsgMain.MIGRATE_DST_SEAMLESS_NACK
        port = await link(addrs[0], ChannelType.PORT, 0x9ABC)
        await port.send(MsgcVmc.DATA, b"early")  # sent before the switch: read after it
        await trio.testing.wait_all_tasks_blocked()
        assert channel.client is None and backend.data == b""  # held, unread
        await main.send(MsgcMain.ATTACH_CHANNELS)  # ignored until the move completes
        await main.send(MsgcMain.MIGRATE_END)
        (init,) = await main.receive()
        assert init.type == MsgMain.INIT and MainInit.decode(init.body).session_id == 0x9ABC
        (port_init,) = await port.receive()
        assert port_init.type == MsgVmc.PORT_INIT
        await settle(lambda: backend.data == b"early")  # an ordinary link: DATA at once
        assert b.migrations_in == {MigrationOutcome.SEMI_SEAMLESS: 1}
        await main.send(MsgcMain.MIGRATE_END)  # out of place: ignored
        await main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(1).encode())
        (nack,) = await main.receive()  # not a target any more
        assert nack.type == MsgMain.MIGRATE_DST_SEAMLESS_NACK
        await port.stream.aclose()
        await main.stream.aclose()
        await settle(lambda: not len(b.sessions) and channel.client is None)


async def test_do_seamless_on_an_ordinary_session_is_nacked() -> None:
    b = Server(config())
    async with b as addrs:
        main, _ = await main_link(addrs[0], SEAMLESS_CAPS)
        await main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(1).encode())
        (nack,) = await main.receive()
        assert nack.type == MsgMain.MIGRATE_DST_SEAMLESS_NACK
        await main.stream.aclose()
        await settle(lambda: not len(b.sessions))
