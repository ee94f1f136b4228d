"""Two trivmc servers in one trio run, over loopback: a raw client plays the client's
part of a seamless VMC migration (links to both, answers MIGRATE with the flush mark,
forwards the source's MIGRATE_DATA body to the target), and every byte it sent to the
source before the move and to the target after reaches the backends exactly once, in
order; the target is a target only for the session id it was told to expect."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    LinkReplyReceived,
    MainInit,
    MainMigrateDstDoSeamless,
    Message,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgcVmc,
    MsgMain,
    MsgVmc,
)
from trivmc.server import Server, ServerConfig, VmcChannel
from trivmc.server.session import SessionTable

from .conftest import Peer
from .test_vmc_migration import GateBackend

PORT = "org.trivmc.mig.0"


def config() -> ServerConfig:
    return ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=4, key_process=False)


async def link(address: object, ctype: int, conn_id: int = 0, caps: Sequence[int] = ()) -> Peer:
    """A plain connection through a whole link (with the channel `caps`), as a Peer
    (the bytes that followed the link already decoded)."""
    assert isinstance(address, tuple)
    stream = await trio.open_tcp_stream(address[0], address[1])
    machine = ClientLink(conn_id, ctype, 0, caps)
    await stream.send_all(machine.initiate())
    with trio.fail_after(10):
        while not machine.done:
            data = await stream.receive_some()
            assert data, "link refused"
            for ev in machine.feed(data):
                if isinstance(ev, LinkReplyReceived):
                    await stream.send_all(ev.data)
    peer = Peer(stream, machine.mini_header)
    peer._got += [Message(m.type, bytes(m.body)) for m in peer.decoder.feed(machine.trailing)]
    return peer


async def main_link(address: object, conn_id: int = 0) -> tuple[Peer, int]:
    """The main channel and the session id MAIN_INIT gives."""
    peer = await link(address, ChannelType.MAIN, conn_id)
    (init,) = await peer.receive()
    assert init.type == MsgMain.INIT
    return peer, MainInit.decode(init.body).session_id


async def target_main_link(address: object, conn_id: int) -> Peer:
    """A migration target's main channel: no MAIN_INIT; DST_DO_SEAMLESS acknowledged."""
    peer = await link(address, ChannelType.MAIN, conn_id)
    await peer.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, MainMigrateDstDoSeamless(1).encode())
    (ack,) = await peer.receive()
    assert ack.type == MsgMain.MIGRATE_DST_SEAMLESS_ACK
    return peer


async def port_link(address: object, session_id: int) -> Peer:
    peer = await link(address, ChannelType.PORT, session_id)
    (init,) = await peer.receive()
    assert init.type == MsgVmc.PORT_INIT
    return peer


async def settle(cond: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not cond():
            await trio.sleep(0.005)


async def test_two_servers_hand_the_pending_writes_over_exactly_once_in_order() -> None:
    src_backend, tgt_backend = GateBackend(room=3000), GateBackend()
    source, target = Server(config()), Server(config())
    src_channel: VmcChannel = source.add_port(PORT, src_backend)
    tgt_channel: VmcChannel = target.add_port(PORT, tgt_backend)
    before = [bytes([65 + i % 26]) * 997 for i in range(40)]
    after = [bytes([97 + i % 26]) * 501 for i in range(40)]
    async with source as src_addrs, target as tgt_addrs:
        src_main, sid = await main_link(src_addrs[0])
        src_port = await port_link(src_addrs[0], sid)
        for chunk in before:
            await src_port.send(MsgcVmc.DATA, chunk)
        total = sum(map(len, before))
        await settle(lambda: src_channel.device.buffered_bytes == total - 3000)

        # the target is told to expect this session; the client links there
        target.expect_migration(sid)
        tgt_main = await target_main_link(tgt_addrs[0], sid)
        assert target.sessions.get(sid) is not None
        tgt_port = await port_link(tgt_addrs[0], sid)

        # the move: MIGRATE, the flush mark, MIGRATE_DATA forwarded to the target
        assert src_channel.migrate_client() is not None
        (mig,) = await src_port.receive()
        assert mig.type == MsgCommon.MIGRATE
        await src_port.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await src_port.receive()
        assert data.type == MsgCommon.MIGRATE_DATA
        await tgt_port.send(MsgcCommon.MIGRATE_DATA, bytes(data.body))
        for chunk in after:
            await tgt_port.send(MsgcVmc.DATA, chunk)
        total += sum(map(len, after))
        await settle(lambda: len(src_backend.data) + len(tgt_backend.data) == total)
        src_backend.open()  # nothing handed over is written by the source
        for peer in (src_port, src_main, tgt_port, tgt_main):
            await peer.stream.aclose()
        await settle(lambda: src_channel.client is None and tgt_channel.client is None)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert bytes(src_backend.data) == b"".join(before)[:3000]
    assert bytes(src_backend.data + tgt_backend.data) == b"".join(before + after)
    s, t = src_channel.device, tgt_channel.device
    assert s.idle and t.idle
    assert s.stats.migrated_out == t.stats.migrated_in == sum(map(len, before)) - 3000
    assert s.stats.dropped == t.stats.dropped == 0
    assert src_channel.bytes_dropped == tgt_channel.bytes_dropped == 0


async def test_only_an_expected_session_id_makes_a_target() -> None:
    """A main link with an unexpected non-zero id gets a new session (and its port
    takes DATA at once); the expected id is used once."""
    backend = GateBackend()
    server = Server(config())
    channel = server.add_port(PORT, backend)
    with pytest.raises(ValueError, match="non-zero u32"):
        server.expect_migration(0)
    async with server as addrs:
        main, sid = await main_link(addrs[0], 0x1234)
        assert sid != 0x1234
        port = await port_link(addrs[0], sid)
        await port.send(MsgcVmc.DATA, b"plain")
        await settle(lambda: backend.data == b"plain")
        await port.stream.aclose()
        await main.stream.aclose()
        await settle(lambda: channel.client is None)

        server.expect_migration(0x1234)
        main = await target_main_link(addrs[0], 0x1234)
        sid = 0x1234
        assert server.sessions.get(sid) is not None and not server.sessions.expected
        port = await port_link(addrs[0], sid)
        await port.send(MsgcVmc.DATA, b"too early")  # a target's port: MIGRATE_DATA first
        assert await port.expect_closed() == []
        assert backend.data == b"plain"
        await settle(lambda: channel.client is None)
        port = await port_link(addrs[0], sid)  # the channel's second link: ordinary
        await port.send(MsgcVmc.DATA, b"+again")
        await settle(lambda: backend.data == b"plain+again")
        await port.stream.aclose()
        await main.stream.aclose()


def test_an_expected_session_id_lapses_after_its_ttl() -> None:
    """Past its ttl an expected id is an ordinary one: a main link presenting it gets
    a fresh id and no migration target; within it, the id is kept (once)."""
    table = SessionTable(multi_session=True)
    table.expect(0x1234, ttl=-1.0)  # already past
    lapsed = table.create(0x1234)
    assert lapsed.connection_id != 0x1234 and not lapsed.migration_target
    assert not table.expected
    table.expect(0x5678, ttl=60.0)
    kept = table.create(0x5678)
    assert kept.connection_id == 0x5678 and kept.migration_target
    again = table.create(0x5678 + 1)
    assert not again.migration_target
