"""A VMC channel's migration in memory, with the peer framing every byte itself: the
source hands the device's pending writes over as SVMD after the client's flush mark,
the target restores them ahead of new DATA, bad migration data costs only its channel."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trivmc.backends import EchoBackend
from trivmc.chardev import ChrEvent, SpiceChardev
from trivmc.protocol import (
    ChannelType,
    Migrate,
    MsgcCommon,
    MsgCommon,
    MsgcVmc,
    MsgVmc,
    ProtocolError,
    VmcMigrateDataHeader,
    check_vmc_migrate_data,
    compress_body,
)
from trivmc.server import ChannelOptions, VmcChannel, VmcChannelClient
from trivmc.server.vmc_migration import MigrationTooLarge

from .conftest import MemoryChannel, Peer


class GateBackend:
    """Records what it is given; takes `room` bytes in all, then nothing until `open()`."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.data = bytearray()
        self.chardev: SpiceChardev | None = None

    def can_read(self) -> int:
        return self.room

    def read(self, data: memoryview) -> None:
        assert len(data) <= self.room
        self.data += data
        self.room -= len(data)

    def event(self, event: ChrEvent) -> None:
        pass

    async def run(self, chardev: SpiceChardev) -> None:
        self.chardev = chardev
        chardev.set_fe_open(True)
        await trio.sleep_forever()

    def open(self) -> None:
        self.room = 1 << 30
        assert self.chardev is not None
        self.chardev.accept_input()


class Side:
    """One server's port channel with one client attached through memory."""

    def __init__(
        self,
        memory_channel: MemoryChannel,
        backend: GateBackend | EchoBackend,
        *,
        target: bool = False,
        max_queued: int = 2 << 20,
        byte_budget: int = 4 << 20,
        max_message: int = 1 << 24,
    ) -> None:
        self.backend = backend
        self.channel = VmcChannel(
            ChannelType.PORT, 0, backend, "org.test.0", byte_budget=byte_budget
        )
        stream, self.peer = memory_channel()
        opts = ChannelOptions("port:0", True, max_message, is_unix=False, max_queued=max_queued)
        self.client = VmcChannelClient(
            stream, opts, channel=self.channel, peer_lz4=False, migration_target=target
        )
        self.error: ProtocolError | None = None
        self.done = trio.Event()

    async def serve(self) -> None:
        try:
            await self.channel.serve_client(self.client, b"")
        except ProtocolError as e:
            self.error = e
        finally:
            await trio.aclose_forcefully(self.client.stream)
            self.done.set()

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.channel.run)
        # the port is open before the client comes: PORT_INIT says so, no PORT_EVENT
        await until(lambda: self.channel.chardev.fe_open)
        nursery.start_soon(self.serve)
        (init,) = await self.peer.receive()
        assert init.type == MsgVmc.PORT_INIT


async def until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.01)


async def migrate_source(s: Side) -> VmcMigrateDataHeader:
    """MIGRATE, the flush mark, then the MIGRATE_DATA the source answers with."""
    assert s.channel.migrate_client() is s.client
    (mig,) = await s.peer.receive()
    assert mig.type == MsgCommon.MIGRATE and Migrate.decode(mig.body).flags == 3
    await s.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
    (data,) = await s.peer.receive()
    assert data.type == MsgCommon.MIGRATE_DATA
    return VmcMigrateDataHeader.decode(data.body)


async def test_the_source_sends_exactly_the_queued_bytes_after_the_flush_mark(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    backend = GateBackend(room=5)  # takes "hello", then stalls
    s = Side(memory_channel, backend)
    async with trio.open_nursery() as nursery:
        await s.start(nursery)
        await s.peer.send(MsgcVmc.DATA, b"hello world")
        await s.peer.send(MsgcVmc.DATA, b"second")
        device = s.channel.device
        await until(lambda: device.buffered_bytes == 12)
        assert s.channel.migrate_client() is s.client
        (mig,) = await s.peer.receive()
        assert mig.type == MsgCommon.MIGRATE and Migrate.decode(mig.body).flags == 3
        # sent before the client saw MIGRATE: still the channel's, queued behind
        await s.peer.send(MsgcVmc.DATA, b"third")
        await s.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await s.peer.receive()
        assert data.type == MsgCommon.MIGRATE_DATA
        mig_data = check_vmc_migrate_data(data.body, 1 << 20)
        assert mig_data.pending == b" worldsecondthird"
        assert (mig_data.version, mig_data.chardev_version, mig_data.write_data_ptr) == (1, 1, 33)
        assert mig_data.num_client_tokens == mig_data.num_send_tokens == 0xFFFFFFFF
        assert mig_data.write_num_client_tokens == 0
        assert s.client.migrated.is_set() and s.client.migrated_bytes == 17
        assert device.idle and device.stats.migrated_out == 17
        backend.open()  # the handed-over bytes are not the source's to write any more
        await trio.sleep(1)
        assert backend.data == b"hello"
        await s.peer.send(MsgcVmc.DATA, b"late")  # the client promised nothing more
        await s.done.wait()
        nursery.cancel_scope.cancel()
    assert s.error is not None and "after the flush mark" in str(s.error)
    assert backend.data == b"hello" and s.channel.bytes_dropped == 0
    assert device.idle and device.stats.written == 5 and device.stats.dropped == 0


async def test_migrate_data_is_not_held_to_the_send_queue_bound(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    """The device's byte budget bounds MIGRATE_DATA, which may exceed max_queued."""
    s = Side(memory_channel, GateBackend(room=0), max_queued=4096)
    async with trio.open_nursery() as nursery:
        await s.start(nursery)
        for i in range(10):
            await s.peer.send(MsgcVmc.DATA, bytes([i]) * 1000)
        await until(lambda: s.channel.device.buffered_bytes == 10_000)
        got = await migrate_source(s)
        assert got.pending == b"".join(bytes([i]) * 1000 for i in range(10))
        nursery.cancel_scope.cancel()
    assert s.error is None


def svmd(pending: bytes, **fields: int) -> bytes:
    values = {
        "version": 1,
        "chardev_version": 1,
        "connected": 1,
        "write_size": len(pending),
        "write_data_ptr": 33,
    }
    values.update(fields)
    return (
        struct.pack(
            "<4sIIBIIIII",
            b"SVMD",
            values["version"],
            values["chardev_version"],
            values["connected"],
            0xFFFFFFFF,
            0xFFFFFFFF,
            values["write_size"],
            0,
            values["write_data_ptr"],
        )
        + pending
    )


async def test_the_target_writes_the_restored_bytes_before_new_data(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    backend = GateBackend(room=3)  # part of the restored bytes, then a stall
    t = Side(memory_channel, backend, target=True)
    async with trio.open_nursery() as nursery:
        await t.start(nursery)
        await t.peer.send(MsgcCommon.MIGRATE_DATA, svmd(b"pending-"))
        await t.peer.send(MsgcVmc.DATA, b"new")
        await t.client.migrated.wait()
        device = t.channel.device
        await until(lambda: device.queued_buffers == 2)
        assert backend.data == b"pen"
        backend.open()
        await until(lambda: device.idle)
        assert backend.data == b"pending-new"
        await t.peer.send(MsgcVmc.DATA, b"+more")  # the hot path again
        await until(lambda: backend.data == b"pending-new+more")
        nursery.cancel_scope.cancel()
    assert t.error is None
    assert device.stats.migrated_in == 8 and device.stats.in_data == 8
    assert device.idle and t.client.migrated_bytes == 8


BAD = [
    (svmd(b"abc")[:20], "header alone"),
    (b"XVMD" + svmd(b"abc")[4:], "bad magic"),
    (svmd(b"abc", version=2), "SVMD version 2"),
    (svmd(b"abc", chardev_version=7), "char-device version 7"),
    (svmd(b"abc", connected=0), "connected is 0"),
    (svmd(b"abc", write_size=193), "above the bound 192"),
    (svmd(b"abc", write_size=0xFFFFFFFF), "above the bound 192"),
    (svmd(b"x" * 200), "declares 233 bytes, bound 225"),
    (svmd(b"abc", write_data_ptr=8), "inside the 33-byte header"),
    (svmd(b"abc", write_size=4), "does not end"),
    (svmd(b"abc", write_data_ptr=0xFFFFFFF0), "does not end"),
    (svmd(b"abc") + b"!", "does not end"),
]


@pytest.mark.parametrize(("first", "match"), [*BAD, (None, "before MIGRATE_DATA")])
async def test_bad_migration_data_closes_that_channel_only(
    memory_channel: MemoryChannel,
    autojump_clock: trio.testing.MockClock,
    first: bytes | None,
    match: str,
) -> None:
    backend = GateBackend()
    t = Side(memory_channel, backend, target=True, byte_budget=64, max_message=64)
    other = Side(memory_channel, EchoBackend())
    async with trio.open_nursery() as nursery:
        await t.start(nursery)
        await other.start(nursery)
        if first is None:
            await t.peer.send(MsgcVmc.DATA, b"too early")
        else:
            await t.peer.send(MsgcCommon.MIGRATE_DATA, first)
        await t.done.wait()
        await other.peer.send(MsgcVmc.DATA, b"still served")
        (echo,) = await other.peer.receive()
        assert echo.type == MsgVmc.DATA and echo.body == b"still served"
        nursery.cancel_scope.cancel()
    assert t.error is not None and match in str(t.error)
    assert backend.data == b"" and t.channel.device.idle
    assert t.channel.device.stats.migrated_in == 0 and not t.client.migrated.is_set()
    assert other.error is None


async def test_the_target_takes_all_a_source_device_may_hold(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    """A source holds up to its byte budget plus one message, and what was in flight
    when MIGRATE went out (one more): the target takes a MIGRATE_DATA that large even
    though it is above max_message."""
    backend = GateBackend()
    t = Side(memory_channel, backend, target=True, byte_budget=64, max_message=64)
    async with trio.open_nursery() as nursery:
        await t.start(nursery)
        await t.peer.send(MsgcCommon.MIGRATE_DATA, svmd(b"m" * 192))
        await t.peer.send(MsgcVmc.DATA, b"n" * 64)
        await until(lambda: len(backend.data) == 256)
        await t.peer.send(MsgcVmc.DATA, b"n" * 65)  # max_message holds for DATA
        await t.done.wait()
        nursery.cancel_scope.cancel()
    assert bytes(backend.data) == b"m" * 192 + b"n" * 64
    assert t.error is not None and "declares 65 bytes, bound 64" in str(t.error)


async def test_migration_messages_out_of_place_are_errors(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    plain = Side(memory_channel, GateBackend())
    target = Side(memory_channel, GateBackend(), target=True)
    async with trio.open_nursery() as nursery:
        await plain.start(nursery)
        await target.start(nursery)
        await plain.peer.send(MsgcCommon.MIGRATE_DATA, svmd(b""))
        await target.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        await plain.done.wait()
        await target.done.wait()
        nursery.cancel_scope.cancel()
    assert plain.error is not None and "without migration" in str(plain.error)
    assert target.error is not None and "MIGRATE_FLUSH_MARK unexpected" in str(target.error)


async def test_source_to_target_in_memory_every_byte_once_in_order(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    """The client's part played by hand: DATA to the source (whose device takes part of
    it), MIGRATE, flush mark, the SVMD forwarded to the target, DATA to the target.
    What each backend got, joined, is what was sent; both devices end idle."""
    src_backend, tgt_backend = GateBackend(room=2500), GateBackend(room=0)
    src = Side(memory_channel, src_backend)
    tgt = Side(memory_channel, tgt_backend, target=True)
    before = [bytes([65 + i % 26]) * 1000 for i in range(20)]
    after = [bytes([97 + i % 26]) * 700 for i in range(10)]
    async with trio.open_nursery() as nursery:
        await src.start(nursery)
        await tgt.start(nursery)
        for chunk in before:
            await src.peer.send(MsgcVmc.DATA, chunk)
        await until(lambda: src.channel.device.buffered_bytes == 20_000 - 2500)
        assert src.channel.migrate_client() is src.client
        (mig,) = await src.peer.receive()
        assert mig.type == MsgCommon.MIGRATE
        await src.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await src.peer.receive()
        assert data.type == MsgCommon.MIGRATE_DATA
        await tgt.peer.send(MsgcCommon.MIGRATE_DATA, data.body)
        for chunk in after:
            await tgt.peer.send(MsgcVmc.DATA, chunk)
        await tgt.client.migrated.wait()
        tgt_backend.open()
        await until(lambda: len(tgt_backend.data) == 17_500 + 7000)
        await src.peer.stream.aclose()
        await tgt.peer.stream.aclose()
        await src.done.wait()
        await tgt.done.wait()
        await until(lambda: src.channel.client is None and tgt.channel.client is None)
        nursery.cancel_scope.cancel()
    assert src.error is None and tgt.error is None
    assert bytes(src_backend.data) == b"".join(before)[:2500]
    assert bytes(src_backend.data + tgt_backend.data) == b"".join(before + after)
    s, t = src.channel.device, tgt.channel.device
    assert s.idle and t.idle and s.tokens_free == t.tokens_free == s.total_tokens
    assert s.stats.migrated_out == t.stats.migrated_in == 17_500
    assert s.stats.written + s.stats.migrated_out == s.stats.in_data == 20_000
    assert t.stats.written == t.stats.migrated_in + t.stats.in_data
    assert s.stats.dropped == t.stats.dropped == 0
    assert src.channel.bytes_dropped == tgt.channel.bytes_dropped == 0


async def test_migrate_client_needs_an_attached_client_and_runs_once(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    s = Side(memory_channel, GateBackend())
    assert s.channel.migrate_client() is None  # nobody attached: nothing to move
    async with trio.open_nursery() as nursery:
        await s.start(nursery)
        assert s.channel.migrate_client() is s.client
        with pytest.raises(RuntimeError, match="MIGRATE now"):
            s.channel.migrate_client()
        (mig,) = await s.peer.receive()
        assert mig.type == MsgCommon.MIGRATE
        await s.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await s.peer.receive()
        assert check_vmc_migrate_data(data.body, 0).pending == b""
        with pytest.raises(RuntimeError):
            s.channel.migrate_client()  # a connection migrates once
        nursery.cancel_scope.cancel()
    assert s.error is None and s.client.migrated_bytes == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.booleans()), max_size=8),
    after=st.lists(st.binary(min_size=1, max_size=300), max_size=4),
    src_room=st.integers(0, 1500),
    tgt_room=st.integers(0, 1500),
    early_after_migrate=st.integers(0, 3),
)
def test_any_move_delivers_every_byte_once_in_order(
    before: list[tuple[bytes, bool]],
    after: list[bytes],
    src_room: int,
    tgt_room: int,
    early_after_migrate: int,
) -> None:
    """DATA and COMPRESSED_DATA to a source whose backend takes `src_room` bytes, some
    of it sent after MIGRATE went out (before the client saw it), the SVMD forwarded,
    DATA to a target that stalls at `tgt_room`: the backends get it all, once, in order."""

    async def main() -> None:
        def memory_channel() -> tuple[trio.abc.Stream, Peer]:
            server_end, peer_end = trio.testing.memory_stream_pair()
            return server_end, Peer(peer_end)

        src_backend, tgt_backend = GateBackend(src_room), GateBackend(tgt_room)
        src = Side(memory_channel, src_backend)
        tgt = Side(memory_channel, tgt_backend, target=True)
        sent = b""
        async with trio.open_nursery() as nursery:
            await src.start(nursery)
            await tgt.start(nursery)
            held = before[len(before) - early_after_migrate :] if early_after_migrate else []
            for i, (chunk, compress) in enumerate(before):
                if i == len(before) - len(held):
                    await trio.testing.wait_all_tasks_blocked()
                    src.channel.migrate_client()
                body = compress_body(chunk) if compress else None
                if body is None:
                    await src.peer.send(MsgcVmc.DATA, chunk)
                else:
                    await src.peer.send(MsgcVmc.COMPRESSED_DATA, body)
                sent += chunk
            if not held:
                await trio.testing.wait_all_tasks_blocked()
                src.channel.migrate_client()
            (mig,) = await src.peer.receive()
            assert mig.type == MsgCommon.MIGRATE
            await src.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
            (data,) = await src.peer.receive()
            await tgt.peer.send(MsgcCommon.MIGRATE_DATA, data.body)
            for chunk in after:
                await tgt.peer.send(MsgcVmc.DATA, chunk)
                sent += chunk
            await tgt.client.migrated.wait()
            await trio.testing.wait_all_tasks_blocked()
            tgt_backend.open()
            await until(lambda: len(src_backend.data) + len(tgt_backend.data) == len(sent))
            await src.peer.stream.aclose()
            await tgt.peer.stream.aclose()
            await src.done.wait()
            await tgt.done.wait()
            nursery.cancel_scope.cancel()
        assert src.error is None and tgt.error is None
        assert bytes(src_backend.data + tgt_backend.data) == sent
        assert src.channel.device.stats.migrated_out == tgt.channel.device.stats.migrated_in
        assert src.channel.device.stats.dropped == tgt.channel.device.stats.dropped == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_stalled_source_holds_what_comes_before_the_flush_mark(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    """The device is stalled and its budget full: a DATA waits for room. MIGRATE going
    out ends the wait; that DATA and every one after it until the flush mark are held
    and sent after the device's queue, in order, in MIGRATE_DATA; the counters add up."""
    backend = GateBackend(room=0)
    s = Side(memory_channel, backend, byte_budget=128, max_message=64)
    async with trio.open_nursery() as nursery:
        await s.start(nursery)
        for i in range(3):  # 2 fill the budget, the third waits
            await s.peer.send(MsgcVmc.DATA, bytes([65 + i]) * 64)
        await until(lambda: s.channel.device.buffered_bytes == 128)
        assert s.channel.migrate_client() is s.client
        (mig,) = await s.peer.receive()
        assert mig.type == MsgCommon.MIGRATE
        await s.peer.send(MsgcVmc.DATA, b"D" * 64)  # sent before the client saw MIGRATE
        await s.peer.send(MsgcCommon.MIGRATE_FLUSH_MARK)
        (data,) = await s.peer.receive()
        nursery.cancel_scope.cancel()
    header = VmcMigrateDataHeader.decode(data.body)
    assert header.pending == b"A" * 64 + b"B" * 64 + b"C" * 64 + b"D" * 64
    stats = s.channel.device.stats
    assert stats.in_data == stats.migrated_out == 256 and backend.data == b""


async def test_a_source_holds_no_more_than_a_target_takes(
    memory_channel: MemoryChannel, autojump_clock: trio.testing.MockClock
) -> None:
    """Past `max_migrated` (budget + 2 messages) the channel ends with a clear error."""
    backend = GateBackend(room=0)
    s = Side(memory_channel, backend, byte_budget=128, max_message=64)
    async with trio.open_nursery() as nursery:
        await s.start(nursery)
        assert s.client.max_migrated == 256
        await s.peer.send(MsgcVmc.DATA, b"A" * 64)
        await s.peer.send(MsgcVmc.DATA, b"B" * 64)
        await until(lambda: s.channel.device.buffered_bytes == 128)
        s.channel.migrate_client()
        for _ in range(3):  # 128 queued + 2 x 64 held = 256 fits; one more does not
            await s.peer.send(MsgcVmc.DATA, b"C" * 64)
        await s.done.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(s.error, MigrationTooLarge), s.error
    assert "more than 256 bytes" in str(s.error)
