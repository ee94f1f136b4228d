"""CharDevice: partial writes, the retry timer, tokens, release on every path."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.chardev import CLIENT_QUEUE_LIMIT, MAX_READ, VMC_TOKENS, CharDevice
from trivmc.chardev.interface import DeviceData

from .fakes import FakeClient, ScriptedInstance


async def test_one_byte_at_a_time_in_order(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance(per_write=1)
    dev = CharDevice(inst)
    payload = [bytes([i]) * 5 for i in range(10)]
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        for p in payload:
            dev.write_buffer_add(await dev.get_write_buffer(p))
        while dev.queued_buffers:
            dev.wakeup_writable()  # the device signals it can take more
            await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"".join(payload)
    assert dev.idle and dev.tokens_free == VMC_TOKENS


async def test_never_signalling_device_drains_on_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=3)
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.write_buffer_add(await dev.get_write_buffer(b"abcdefghij"))
        while dev.queued_buffers:
            await trio.sleep(0.05)  # MockClock: virtual time passes, no real waiting
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"abcdefghij"
    gaps = [b - a for a, b in zip(inst.write_times, inst.write_times[1:], strict=False)]
    assert len(gaps) == 3 and all(g >= 0.1 - 1e-9 for g in gaps)
    assert dev.write_retries == 3 and dev.idle


async def test_no_retry_before_100ms(mock_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance(per_write=0)
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.write_buffer_add(await dev.get_write_buffer(b"xy"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(inst.write_times) == 1
        mock_clock.jump(0.099)
        await trio.testing.wait_all_tasks_blocked()
        assert len(inst.write_times) == 1, "retried before 100 ms"
        mock_clock.jump(0.002)
        await trio.testing.wait_all_tasks_blocked()
        assert len(inst.write_times) == 2
        n.cancel_scope.cancel()
    assert dev.idle  # cancellation released the buffer being written


async def test_wakeup_during_write_is_not_lost(mock_clock: trio.testing.MockClock) -> None:
    dev: CharDevice

    class SignalsInsideWrite(ScriptedInstance):
        def write(self, data: memoryview) -> int:
            n = super().write(data)
            dev.wakeup_writable()  # the device frees room while we are writing
            return n

    inst = SignalsInsideWrite(per_write=1)
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.write_buffer_add(await dev.get_write_buffer(b"abc"))
        await trio.testing.wait_all_tasks_blocked()  # no clock jump: no timer fired
        assert bytes(inst.written) == b"abc"
        n.cancel_scope.cancel()


async def test_backpressure_129th_buffer_waits(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance(per_write=0)
    dev = CharDevice(inst)
    got = trio.Event()

    async def take_one_more() -> None:
        buf = await dev.get_write_buffer(b"!")
        dev.write_buffer_add(buf)
        got.set()

    async with trio.open_nursery() as n:
        await n.start(dev.run)
        for i in range(VMC_TOKENS):
            dev.write_buffer_add(await dev.get_write_buffer(bytes([i % 256])))
        assert dev.tokens_free == 0
        n.start_soon(take_one_more)
        await trio.sleep(1.0)  # virtual: many retry periods pass, still stalled
        assert not got.is_set()
        inst.per_write = 1 << 20  # unstall
        dev.wakeup_writable()
        await got.wait()
        while dev.queued_buffers:
            await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert len(inst.written) == VMC_TOKENS + 1 and dev.idle


async def test_accepted_data_written_after_client_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=0)
    dev = CharDevice(inst)
    client = FakeClient()
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        for i in range(5):
            dev.write_buffer_add(await dev.get_write_buffer(bytes([i]) * 10))
        dev.remove_client(client)
        inst.per_write = 1 << 20
        while dev.queued_buffers:
            await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"".join(bytes([i]) * 10 for i in range(5))
    assert inst.states == [True, False]


async def test_reset_returns_every_token(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance(per_write=0)
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        for _ in range(10):
            dev.write_buffer_add(await dev.get_write_buffer(b"data"))
        await trio.sleep(0.3)
        dev.reset()
        await trio.testing.wait_all_tasks_blocked()
        assert dev.idle and dev.queued_buffers == 0
        n.cancel_scope.cancel()


async def test_device_to_client_pauses_at_1mib(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance()
    chunk = bytes(MAX_READ)
    inst.to_read = [chunk] * 40  # 2.6 MB available
    dev = CharDevice(inst)
    client = FakeClient()
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        await trio.testing.wait_all_tasks_blocked()
        first = len(client.received)
        assert CLIENT_QUEUE_LIMIT <= first < CLIENT_QUEUE_LIMIT + MAX_READ
        client.drain()
        await trio.testing.wait_all_tasks_blocked()
        assert len(client.received) >= first + CLIENT_QUEUE_LIMIT  # resumed
        client.drain()
        await trio.testing.wait_all_tasks_blocked()
        assert len(client.received) == 40 * MAX_READ
        assert dev.stats.read == 40 * MAX_READ
        n.cancel_scope.cancel()


async def test_nothing_read_without_a_client(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance()
    inst.to_read = [b"abc"]
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.wakeup()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.to_read == [b"abc"]
        client = FakeClient()
        dev.attach_client(client)
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(client.received) == b"abc"
        n.cancel_scope.cancel()


# ---- random schedules: cancellation and client removal at any point -------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 50), st.integers(0, 3)),
        st.tuples(st.just("cancel"), st.integers(0, 5), st.integers(0, 0)),
        st.tuples(st.just("remove"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("stall"), st.integers(0, 4), st.integers(0, 0)),
        st.tuples(st.just("time"), st.integers(0, 30), st.integers(0, 0)),
        st.tuples(st.just("fast"), st.integers(1, 50), st.integers(0, 0)),
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(OPS, st.sampled_from([4, VMC_TOKENS]))
def test_random_schedules_release_everything(ops: list[tuple[str, int, int]], tokens: int) -> None:
    async def scenario() -> None:
        inst = ScriptedInstance(per_write=2)
        dev = CharDevice(inst, tokens=tokens)
        queued: list[bytes] = []
        counter = 0

        async def sender(data: bytes, delay: int, scope: trio.CancelScope) -> None:
            with scope:
                async with dev.write_buffer(data):
                    await trio.sleep(delay * 0.01)  # filling takes a while
                queued.append(data)

        async with trio.open_nursery() as n:
            await n.start(dev.run)
            client = FakeClient()
            dev.attach_client(client)
            scopes: list[trio.CancelScope] = []
            for op, a, b in ops:
                if op == "fast":
                    counter += 1
                    data = counter.to_bytes(4, "big") * a
                    if dev.try_write(data):  # the server's hot path
                        queued.append(data)
                    else:
                        n.start_soon(sender, data, 0, trio.CancelScope())
                elif op == "send":
                    counter += 1
                    data = counter.to_bytes(4, "big") * a
                    scope = trio.CancelScope()
                    scopes.append(scope)
                    n.start_soon(sender, data, b, scope)
                elif op == "cancel" and scopes:
                    scopes[a % len(scopes)].cancel()
                elif op == "remove":
                    dev.remove_client(client)
                    client = FakeClient()
                    dev.attach_client(client)
                elif op == "stall":
                    inst.per_write = a
                    dev.wakeup_writable()
                else:
                    await trio.sleep(a * 0.01)
            inst.per_write = 1 << 20
            dev.wakeup_writable()
            await trio.testing.wait_all_tasks_blocked()
            while dev.queued_buffers or dev.outstanding_buffers:
                await trio.sleep(0.1)
            assert bytes(inst.written) == b"".join(queued)  # in order, none twice
            assert dev.idle and dev.tokens_free == tokens
            n.cancel_scope.cancel()
        assert dev.idle

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_stop_pauses_and_start_resumes(autojump_clock: trio.testing.MockClock) -> None:
    inst = ScriptedInstance()
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.stop()
        dev.write_buffer_add(await dev.get_write_buffer(b"held"))
        await trio.sleep(1.0)
        assert inst.written == b"" and dev.queued_buffers == 1
        dev.start()
        await trio.testing.wait_all_tasks_blocked()
        assert inst.written == b"held" and dev.idle
        n.cancel_scope.cancel()


async def test_reset_while_stopped_returns_the_writers_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inst = ScriptedInstance(per_write=1)
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.write_buffer_add(await dev.get_write_buffer(b"abcdef"))
        await trio.testing.wait_all_tasks_blocked()  # the writer holds it, 1 byte written
        dev.stop()
        await trio.sleep(0.5)
        dev.reset()
        await trio.testing.wait_all_tasks_blocked()
        assert dev.idle and dev.queued_buffers == 0
        assert len(inst.written) < 6
        n.cancel_scope.cancel()


async def test_try_write_hot_path(autojump_clock: trio.testing.MockClock) -> None:
    """Idle device: written at once, no token kept. Partial: the rest queued under one
    token. Something queued: False (the caller must queue behind it)."""
    inst = ScriptedInstance()
    dev = CharDevice(inst)
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        assert dev.try_write(b"abc") and dev.idle and bytes(inst.written) == b"abc"
        inst.per_write = 2
        assert dev.try_write(b"defgh")
        assert dev.tokens_free == VMC_TOKENS - 1 and dev.queued_buffers == 1
        assert not dev.try_write(b"ij")  # queued data goes first
        dev.write_buffer_add(await dev.get_write_buffer(b"ij"))
        inst.per_write = 1 << 20
        while dev.queued_buffers:
            dev.wakeup_writable()
            await trio.testing.wait_all_tasks_blocked()
        dev.stop()
        assert not dev.try_write(b"k")  # stopped: the queued path waits for start()
        n.cancel_scope.cancel()
    assert bytes(inst.written) == b"abcdefghij"
    assert dev.tokens_free == VMC_TOKENS and dev.outstanding_buffers == 0


async def test_a_wakeup_from_inside_a_read_is_read_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wakeup re-entered through the client (more device data while a chunk is being
    pushed) does not start a nested read: the reader task reads on, in order."""
    inst = ScriptedInstance()
    dev = CharDevice(inst)
    more = [b"c", b"d"]

    class EchoingClient(FakeClient):
        def push_device_data(self, data: DeviceData) -> int | None:
            super().push_device_data(data)
            if more:
                inst.to_read.append(more.pop(0))
                dev.wakeup()  # from inside the read that pushed `data`
            return None

    client = EchoingClient()
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        inst.to_read = [b"a", b"b"]
        dev.wakeup()
        assert bytes(client.received) == b"abcd"  # the outer read went on, in order
        await trio.testing.wait_all_tasks_blocked()
        inst.to_read.append(b"e")
        dev.wakeup()
        assert bytes(client.received) == b"abcde"  # inline again: the flag was consumed
        n.cancel_scope.cancel()


async def test_stats_count_what_passes(autojump_clock: trio.testing.MockClock) -> None:
    """spicevmc's counters, counted by the device: DATA payloads and decompressed
    COMPRESSED_DATA once accepted (hot and slow path), device bytes once pushed, by how
    the client sent them."""

    class CompressingClient(FakeClient):
        def push_device_data(self, data: DeviceData) -> int | None:
            super().push_device_data(data)
            return len(data) // 2 if len(data) > 3 else None  # "compressed" past 3 bytes

    inst = ScriptedInstance()
    dev = CharDevice(inst)
    client = CompressingClient()
    async with trio.open_nursery() as n:
        await n.start(dev.run)
        dev.attach_client(client)
        assert dev.try_write(b"abc")
        assert dev.try_write(b"x" * 40, compressed_size=7)
        dev.write_buffer_add(await dev.get_write_buffer(b"de"))
        async with dev.write_buffer(compressed_size=5) as buf:
            buf.data = b"y" * 30
        inst.to_read = [b"12", b"345678"]
        dev.wakeup()
        n.cancel_scope.cancel()
    st = dev.stats
    assert (st.in_data, st.in_compressed, st.in_decompressed) == (5, 12, 70)
    assert (st.out_data, st.out_compressed, st.out_uncompressed) == (2, 3, 6)
    assert st.written == 75 and st.read == 8 and st.dropped == 0
