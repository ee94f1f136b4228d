"""Memory is bounded by budget, not by the peer: a client that never reads, sends the
largest messages the server takes, or has them inflate, costs at most the stated bounds
(docs/limits.md), and a client whose queue passes its bound is disconnected."""

from __future__ import annotations

import struct

import lz4.block
import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.chardev import CLIENT_QUEUE_LIMIT, MAX_READ
from trivmc.client import connect
from trivmc.client.session import link_channel, parse_uri
from trivmc.protocol import ChannelType, MessageEncoder, MsgcMain, MsgcVmc, VmcCap
from trivmc.server import ChannelOptions, Server, ServerConfig
from trivmc.server.channel import ChannelClient, PeerNotReading

from .test_bad_input import ECHO, settle, still_serves
from .test_resets import Target, linked_socket, send

MIB = 1024 * 1024


@pytest.mark.parametrize("kind", ["data-8mib", "lz4-inflating-to-16mib"])
async def test_a_client_that_never_reads_costs_the_budget(kind: str) -> None:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2)
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    enc = MessageEncoder(True)
    if kind == "data-8mib":
        size = 8 * MIB
        wire = enc.encode(MsgcVmc.DATA, bytes(range(256)) * (size // 256))
    else:
        size = 16 * MIB
        block = lz4.block.compress(bytes(size), store_size=False)
        wire = enc.encode(MsgcVmc.COMPRESSED_DATA, struct.pack("<BI", 1, size) + block)
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        channel = server.channels[(ChannelType.PORT, 0)]
        device = channel.device
        async with connect(uri) as session:
            linked = await link_channel(
                parse_uri(uri),
                session.session_id,
                ChannelType.PORT,
                0,
                [VmcCap.DATA_COMPRESS_LZ4],
                None,
            )
            async with linked.stream, trio.open_nursery() as nursery:

                async def flood() -> None:
                    while True:
                        await linked.stream.send_all(wire)

                nursery.start_soon(flood)
                held = []
                for _ in range(5):  # the server stops reading; look at it a few times
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                    client = channel.client
                    assert client is not None
                    held.append(device.buffered_bytes)
                    assert device.buffered_bytes <= device.byte_budget + size
                    assert client.decoder.buffered <= size + 18
                    assert client.queued_bytes <= CLIENT_QUEUE_LIMIT + MAX_READ
                    st = device.stats
                    undelivered = st.in_data + st.in_decompressed - st.written
                    if kind != "data-8mib":
                        assert undelivered <= device.byte_budget + size
                    assert device.tokens_free >= device.total_tokens - 8
                assert max(held) >= device.byte_budget  # it really was flooded
                nursery.cancel_scope.cancel()
        # the client is gone: echo output is dropped, the device drains to idle
        await settle(lambda: device.idle and device.client is None)
        await still_serves(uri, server)


async def test_main_channel_client_that_never_reads_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ATTACH_CHANNELS in a loop, never reading the CHANNELS_LIST answers: the main
    channel's queue passes its bound and the client is disconnected, with a log line."""
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, max_main_queue=64 * 1024)
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        t = Target(server, port, 0, None)  # type: ignore[arg-type]
        sock, _ = await linked_socket(t, ChannelType.MAIN)
        attach = MessageEncoder(True).encode(MsgcMain.ATTACH_CHANNELS) * 10000
        with trio.fail_after(30):
            try:
                while True:
                    await send(sock, attach)
            except OSError:
                pass  # the server closed the connection
        sock.close()
        await settle(lambda: len(server.sessions) == 0)
        assert "the peer is not reading" in caplog.text
        await still_serves(f"spice://127.0.0.1:{port}", server)


async def test_channel_queue_bound_ends_run_with_peer_not_reading() -> None:
    """A queue past `max_queued` ends `run()` with PeerNotReading, from whatever task
    queued the message, and the queue is dropped."""
    a, _b = trio.testing.lockstep_stream_pair()  # nothing moves unless b reads
    opts = ChannelOptions("t", True, 1 << 16, False, max_queued=10_000)
    client = ChannelClient(a, opts)

    async def producer() -> None:
        while True:
            client.send(101, b"x" * 1000)  # never raises into its caller
            await trio.sleep(0)

    async with trio.open_nursery() as n:
        n.start_soon(producer)
        with pytest.raises(PeerNotReading):
            await client.run()
        n.cancel_scope.cancel()
    assert client.queued_bytes == 0
