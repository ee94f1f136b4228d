"""The char device counters have spice-server's meanings (spicevmc.cpp): `in_data` the
payload of DATA, `in_compressed` / `in_decompressed` the LZ4 block of COMPRESSED_DATA
and what it decompressed to; outward, `out_data` what went as DATA, `out_compressed` /
`out_uncompressed` the LZ4 block sent and the device bytes it holds. `written` and
`read` are the device's own: bytes through the instance.

The test client here frames every message itself and adds up what the server sent, so
each counter is checked against an independent count, exactly."""

from __future__ import annotations

import os

import pytest
import trio

from trivmc.client import connect
from trivmc.client.session import MessageConnection, link_channel, parse_uri
from trivmc.protocol import (
    COMPRESSED_HEAD_SIZE,
    ChannelType,
    MsgcVmc,
    MsgVmc,
    VmcCap,
    compress_body,
    decompress_body,
)
from trivmc.server import Server, ServerConfig

from .test_bad_input import ECHO, StallingBackend, settle

SMALL = b"s" * 500  # under the LZ4 threshold: DATA whatever the caps
RANDOM = os.urandom(20_000)  # LZ4 does not shrink it: DATA
TEXT = b"compressible text, " * 3000  # 57 000 bytes that LZ4 shrinks


class Received:
    """What the server sent, added up by message kind."""

    def __init__(self) -> None:
        self.data = 0
        self.compressed = 0  # LZ4 block bytes
        self.uncompressed = 0  # what those blocks held
        self.payload = b""

    async def read(self, conn: MessageConnection, total: int) -> None:
        with trio.fail_after(30):
            while len(self.payload) < total:
                msg = await conn.receive()
                assert msg is not None, "closed early"
                if msg.type == MsgVmc.DATA:
                    self.data += len(msg.body)
                    self.payload += bytes(msg.body)
                elif msg.type == MsgVmc.COMPRESSED_DATA:
                    data = decompress_body(msg.body, 1 << 20)
                    self.compressed += len(msg.body) - COMPRESSED_HEAD_SIZE
                    self.uncompressed += len(data)
                    self.payload += data


@pytest.mark.parametrize("lz4", [False, True], ids=["plain", "lz4"])
async def test_counters_count_as_spicevmc_does(lz4: bool) -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    channel = server.add_port(ECHO, StallingBackend())
    stats = channel.device.stats
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri) as session:
            caps = [VmcCap.DATA_COMPRESS_LZ4] if lz4 else []
            linked = await link_channel(
                parse_uri(uri), session.session_id, ChannelType.PORT, 0, caps, None
            )
            async with linked.stream:
                conn = MessageConnection(linked)
                sent = [(MsgcVmc.DATA, SMALL), (MsgcVmc.DATA, RANDOM)]
                block = compress_body(TEXT)
                assert block is not None
                if lz4:  # a client that did not get the cap must not compress
                    sent.append((MsgcVmc.COMPRESSED_DATA, block))
                else:
                    sent.append((MsgcVmc.DATA, TEXT))
                await conn.send_raw(b"".join(conn.encoder.encode(t, b) for t, b in sent))
                got = Received()
                total = len(SMALL) + len(RANDOM) + len(TEXT)
                await got.read(conn, total)
                assert got.payload == SMALL + RANDOM + TEXT
        await settle(lambda: channel.client is None)
    if lz4:
        assert stats.in_data == len(SMALL) + len(RANDOM)
        assert stats.in_compressed == len(block) - COMPRESSED_HEAD_SIZE
        assert stats.in_decompressed == len(TEXT)
        assert got.compressed > 0  # the echoed text went back compressed, at least in part
    else:
        assert stats.in_data == total
        assert stats.in_compressed == stats.in_decompressed == 0
        assert got.compressed == got.uncompressed == 0
    assert stats.out_data == got.data
    assert stats.out_compressed == got.compressed
    assert stats.out_uncompressed == got.uncompressed
    assert stats.written == stats.read == total
    assert stats.out_data + stats.out_uncompressed == total


async def test_in_counts_accepted_messages_and_written_what_reached_the_device() -> None:
    """While the device is stalled, `in_data` counts each DATA the device accepted (one
    per token) and `written` stays 0; once it takes data, `written` catches up."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    backend = StallingBackend()
    backend.stalled = True
    channel = server.add_port(ECHO, backend)
    device = channel.device
    async with server as addrs, connect(f"spice://127.0.0.1:{addrs[0][1]}") as session:  # type: ignore[index]
        port = await session.open_port(ECHO)
        await port.send_all(os.urandom(200 * 1000))  # 4 DATA messages of 64 KiB or less
        await settle(lambda: device.stats.in_data == 200 * 1000)
        assert device.stats.written == 0 and device.buffered_bytes == 200 * 1000
        backend.unstall()
        await settle(lambda: device.stats.written == 200 * 1000)
        assert device.stats.in_data == 200 * 1000 and device.stats.in_decompressed == 0


async def test_bytes_held_when_the_device_stops_count_as_dropped() -> None:
    """Removing a channel whose device is stalled drops what it held, the buffer the
    writer was retrying included: `in_data` = `written` + `dropped`."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    backend = StallingBackend()
    backend.stalled = True
    channel = server.add_port(ECHO, backend)
    device = channel.device
    async with server as addrs, connect(f"spice://127.0.0.1:{addrs[0][1]}") as session:  # type: ignore[index]
        port = await session.open_port(ECHO)
        await port.send_all(os.urandom(200 * 1000))
        await settle(lambda: device.stats.in_data == 200 * 1000)
        with trio.fail_after(10):
            await server.remove_channel(channel)
        assert device.idle and device.stats.written == 0
        assert device.stats.dropped == device.stats.in_data == 200 * 1000
