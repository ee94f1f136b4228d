"""Bad input: the server logs it, drops only that connection, and serves the next.

Every test ends by checking that a well-behaved client still works and that the char
device's counters are back at idle.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.chardev import ChrEvent
from trivmc.client import SpiceLinkError, connect
from trivmc.client.address import parse_uri
from trivmc.client.connection import MessageConnection, link_channel
from trivmc.protocol import (
    ChannelType,
    LinkError,
    MessageEncoder,
    MsgcVmc,
    VmcCap,
)
from trivmc.server import Server, ServerConfig

ECHO = "org.trivmc.echo.0"


class StallingBackend(EchoBackend):
    """An echo whose intake can be stalled by the test."""

    stalled = False

    def can_read(self) -> int:
        return 0 if self.stalled else super().can_read()

    def unstall(self) -> None:
        self.stalled = False
        assert self.chardev is not None
        self.chardev.accept_input()

    def event(self, event: ChrEvent) -> None:
        super().event(event)


@asynccontextmanager
async def serving(**kw: object) -> AsyncIterator[tuple[Server, str]]:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, **kw)  # type: ignore[arg-type]
    server = Server(cfg)
    server.add_port(ECHO, StallingBackend())
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        yield server, f"spice://{host}:{port}"


async def settle(cond: Callable[[], bool]) -> None:
    """Wait (bounded) until the server reached a state: every task blocked and `cond`."""
    with trio.fail_after(10):
        while not cond():
            await trio.testing.wait_all_tasks_blocked(cushion=0.005)
            if not cond():
                await trio.sleep(0.005)


async def still_serves(uri: str, server: Server) -> None:
    async with connect(uri) as session:
        ch = await session.open_port(ECHO)
        await ch.send_all(b"ping")
        got = b""
        with trio.fail_after(10):
            while len(got) < 4:
                got += await ch.receive_some()
        assert got == b"ping"
    device = server.channels[(ChannelType.PORT, 0)].device
    await settle(lambda: device.idle and device.client is None)


async def raw_reply(uri: str, data: bytes) -> bytes:
    addr = parse_uri(uri)
    stream = await trio.open_tcp_stream(addr.host or "127.0.0.1", addr.port or 0)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                out += chunk
        return out  # the server closed the connection


def header(major: int = 2, size: int = 22, magic: bytes = b"REDQ") -> bytes:
    return magic + struct.pack("<III", major, 2, size)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"XXXX" + bytes(40), LinkError.INVALID_MAGIC),
        (header(major=3), LinkError.VERSION_MISMATCH),
        (header(size=5000), LinkError.INVALID_DATA),
        (header(size=5), LinkError.INVALID_DATA),
    ],
    ids=["bad-magic", "wrong-version", "oversized-link", "short-link"],
)
async def test_bad_link_headers(
    data: bytes, code: LinkError, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving() as (server, uri):
        reply = await raw_reply(uri, data)
        assert reply[:16] == header(size=178)
        assert struct.unpack_from("<I", reply, 16)[0] == code
        assert f"link refused ({code.name})" in caplog.text
        await still_serves(uri, server)


async def test_truncated_link_and_vanishing_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with serving() as (server, uri):
        addr = parse_uri(uri)
        s = await trio.open_tcp_stream(addr.host or "", addr.port or 0)
        await s.send_all(header()[:10])
        await s.aclose()  # vanishes mid-header
        await settle(lambda: "closed during the link" in caplog.text)
        await still_serves(uri, server)


async def test_link_timeout_drops_silent_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with serving(link_timeout=0.2) as (server, uri):
        addr = parse_uri(uri)
        async with await trio.open_tcp_stream(addr.host or "", addr.port or 0) as s:
            with trio.fail_after(10):
                assert await s.receive_some(10) == b""  # dropped without a reply
        assert "link not finished" in caplog.text
        await still_serves(uri, server)


async def test_wrong_connection_id(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as (server, uri):
        with pytest.raises(SpiceLinkError) as info:
            await link_channel(parse_uri(uri), 12345, ChannelType.PORT, 0, [], None)
        assert info.value.code == LinkError.BAD_CONNECTION_ID
        with pytest.raises(SpiceLinkError) as info:
            await link_channel(parse_uri(uri), 0, ChannelType.WEBDAV, 0, [], None)
        assert info.value.code == LinkError.CHANNEL_NOT_AVAILABLE
        await still_serves(uri, server)


@asynccontextmanager
async def raw_vmc(
    uri: str, lz4: bool = True
) -> AsyncIterator[tuple[MessageConnection, MessageEncoder]]:
    async with connect(uri) as session:
        linked = await link_channel(
            parse_uri(uri),
            session.session_id,
            ChannelType.PORT,
            0,
            [VmcCap.DATA_COMPRESS_LZ4] if lz4 else [],
            None,
        )
        conn = MessageConnection(linked)
        async with linked.stream:
            yield conn, conn.encoder


async def expect_closed(conn: MessageConnection) -> None:
    with trio.fail_after(10):
        while (msg := await conn.receive()) is not None:
            assert msg.type in (201, 101)  # PORT_INIT, echoed DATA


@pytest.mark.parametrize(
    "message",
    [
        "oversized",
        "bad-lz4-size",
        "bad-lz4-type",
        "unknown-type",
        "short-port-event",
    ],
)
async def test_bad_vmc_messages_close_only_that_channel(
    message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(max_vmc_message=1 << 20) as (server, uri):
        async with raw_vmc(uri) as (conn, enc):
            import lz4.block

            block = lz4.block.compress(b"a" * 5000, store_size=False)
            wire = {
                "oversized": enc.header(MsgcVmc.DATA, (1 << 20) + 1) + b"x" * 100,
                "bad-lz4-size": enc.encode(
                    MsgcVmc.COMPRESSED_DATA, struct.pack("<BI", 1, 6000) + block
                ),
                "bad-lz4-type": enc.encode(MsgcVmc.COMPRESSED_DATA, b"\x07" + block),
                "unknown-type": enc.encode(999, b"??"),
                "short-port-event": enc.encode(MsgcVmc.PORT_EVENT, b""),
            }[message]
            await conn.send_raw(enc.encode(MsgcVmc.DATA, b"before") + wire)
            await expect_closed(conn)
        assert "protocol error, closing this connection" in caplog.text
        await still_serves(uri, server)


async def test_client_vanishes_mid_message_with_device_stalled() -> None:
    async with serving() as (server, uri):
        backend = server.channels[(ChannelType.PORT, 0)].backend
        assert isinstance(backend, StallingBackend)
        device = server.channels[(ChannelType.PORT, 0)].device
        backend.stalled = True
        async with raw_vmc(uri, lz4=False) as (conn, enc):
            await conn.send_raw(
                b"".join(enc.encode(MsgcVmc.DATA, bytes([i]) * 1000) for i in range(200))
            )
            await settle(lambda: device.tokens_free == 0)  # the client's reads are paused
            await conn.send_raw(enc.header(MsgcVmc.DATA, 5000) + b"half")
        await settle(lambda: device.client is None)
        assert device.outstanding_buffers == 128  # accepted data is the server's, kept
        backend.unstall()
        await settle(lambda: device.idle)
        assert device.stats.in_data >= 128 * 1000
        await still_serves(uri, server)


async def test_new_main_link_replaces_old_session() -> None:
    async with serving() as (server, uri), connect(uri) as first:
        ch = await first.open_port(ECHO)
        async with connect(uri) as second:
            with trio.fail_after(10):
                with pytest.raises(trio.BrokenResourceError):
                    while await ch.receive_some():
                        pass
            assert second.session_id != first.session_id
            assert len(server.sessions) == 1


async def test_multi_session_keeps_both() -> None:
    async with serving(multi_session=True) as (server, uri):
        async with connect(uri) as first, connect(uri) as second:
            assert len(server.sessions) == 2
            ch = await first.open_port(ECHO)
            await ch.send_all(b"ok")
            with trio.fail_after(10):
                assert await ch.receive_some() == b"ok"
            assert not second.closed
