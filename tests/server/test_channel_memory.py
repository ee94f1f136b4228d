"""Server channels driven in memory through the shared `memory_channel` fixture: the
common rules (ACK window, PING), and a VMC channel's messages end to end to its backend,
with the peer framing every byte itself."""

from __future__ import annotations

import struct

import lz4.block
import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.protocol import (
    Ack,
    AckSync,
    ChannelType,
    DecompressError,
    MsgcCommon,
    MsgCommon,
    MsgcVmc,
    MsgVmc,
    Ping,
    Pong,
    PortInit,
    ProtocolError,
    SetAck,
    UnknownMessage,
    compress_body,
    decompress_body,
)
from trivmc.server import ChannelClient, ChannelOptions, VmcChannel, VmcChannelClient

from .conftest import MemoryChannel

OPTS = ChannelOptions("t", mini_header=True, max_message=1 << 16, is_unix=False)


async def test_ack_window_blocks_and_resumes(memory_channel: MemoryChannel) -> None:
    """With a window of 2 the server sends at most 2 x window + 1 messages unacked."""
    stream, peer = memory_channel()
    client = ChannelClient(stream, ChannelOptions("t", True, 1 << 16, False, ack_window=2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        for _ in range(10):
            client.send(101, b"x")
        first = [m.type for m in await peer.receive(5)]  # SET_ACK + 4 = 2 x window + 1
        assert first[0] == MsgCommon.SET_ACK and first[1:] == [101] * 4
        await trio.testing.wait_all_tasks_blocked()
        # blocked on the window: six 1-byte messages queued, framed (6-byte mini header)
        assert client.unacked == 5 and client.queued_bytes == 6 * 7
        await peer.send(MsgcCommon.ACK_SYNC, AckSync(1).encode())
        await peer.send(MsgcCommon.ACK, Ack().encode())
        assert [m.type for m in await peer.receive(2)] == [101, 101]  # a window's worth
        nursery.cancel_scope.cancel()
    assert SetAck.decode(SetAck(1, 2).encode()).window == 2


async def test_set_ack_goes_ahead_of_what_was_sent_before_run(
    memory_channel: MemoryChannel,
) -> None:
    stream, peer = memory_channel()
    client = ChannelClient(stream, ChannelOptions("t", True, 1 << 16, False, ack_window=4))
    client.send(101, b"early")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        assert [m.type for m in await peer.receive(2)] == [MsgCommon.SET_ACK, 101]
        nursery.cancel_scope.cancel()


async def test_ping_pong_measures_rtt(memory_channel: MemoryChannel) -> None:
    stream, peer = memory_channel()
    client = ChannelClient(stream, OPTS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        client.ping()
        (msg,) = await peer.receive()
        ping = Ping.decode(msg.body)
        await peer.send(MsgcCommon.PONG, Pong(ping.id + 7, 1).encode())  # not ours
        await trio.testing.wait_all_tasks_blocked()
        assert client.min_rtt is None and client.pings_unanswered == 1
        await peer.send(MsgcCommon.PONG, Pong(ping.id, ping.timestamp).encode())
        await trio.testing.wait_all_tasks_blocked()
        assert client.min_rtt is not None and client.min_rtt >= 0
        assert client.pings_unanswered == 0
        nursery.cancel_scope.cancel()


async def test_unknown_message_ends_only_its_connection(memory_channel: MemoryChannel) -> None:
    stream, peer = memory_channel()
    client = ChannelClient(stream, OPTS)
    await peer.send(150, b"?")
    with pytest.raises(UnknownMessage):
        await client.run()
    assert client.queued_bytes == 0 and client.messages_in == 1


class PortSession:
    """A port channel on an echo backend, one client attached through memory."""

    def __init__(self, memory_channel: MemoryChannel, lz4: bool = True) -> None:
        self.channel = VmcChannel(ChannelType.PORT, 0, EchoBackend(), "org.test.0")
        stream, self.peer = memory_channel()
        opts = ChannelOptions("port:0", True, 1 << 20, is_unix=False)
        self.client = VmcChannelClient(stream, opts, channel=self.channel, peer_lz4=lz4)
        self.error: BaseException | None = None

    async def serve(self) -> None:
        try:
            await self.channel.serve_client(self.client, b"")
        except ProtocolError as e:
            self.error = e
        finally:  # as the server does once a channel client ends
            await trio.aclose_forcefully(self.client.stream)


async def test_port_data_reaches_the_backend_and_comes_back(
    memory_channel: MemoryChannel,
) -> None:
    s = PortSession(memory_channel)
    text = b"compressible text " * 1000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.channel.run)
        nursery.start_soon(s.serve)
        (init,) = await s.peer.receive()
        assert init.type == MsgVmc.PORT_INIT
        assert PortInit.decode(init.body).name == b"org.test.0"
        await s.peer.send(MsgcVmc.DATA, b"hello")
        body = compress_body(text)
        assert body is not None
        await s.peer.send(MsgcVmc.COMPRESSED_DATA, body)
        got = b""
        while len(got) < 5 + len(text):
            (m,) = await s.peer.receive()
            if m.type == MsgVmc.DATA:
                got += m.body
            elif m.type == MsgVmc.COMPRESSED_DATA:
                got += decompress_body(m.body, 1 << 20)
        assert got == b"hello" + text
        stats = s.channel.device.stats
        assert stats.in_data == 5 and stats.in_decompressed == len(text)
        s.channel.disconnect_client()
        await s.channel.wait_no_client()
        nursery.cancel_scope.cancel()
    assert s.error is None and s.channel.device.idle


@pytest.mark.parametrize("lie", [-1, 1])
async def test_lz4_that_does_not_decompress_to_its_stated_size_closes_the_channel(
    memory_channel: MemoryChannel, lie: int
) -> None:
    s = PortSession(memory_channel)
    block = lz4.block.compress(b"a" * 5000, store_size=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.channel.run)
        nursery.start_soon(s.serve)
        await s.peer.send(MsgcVmc.COMPRESSED_DATA, struct.pack("<BI", 1, 5000 + lie) + block)
        got = await s.peer.expect_closed()
        assert all(m.type == MsgVmc.PORT_INIT for m in got)  # nothing echoed
        await s.channel.wait_no_client()
        nursery.cancel_scope.cancel()
    assert isinstance(s.error, DecompressError)
    assert s.channel.device.stats.in_decompressed == 0 and s.channel.device.idle
