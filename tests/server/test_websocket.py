"""WebSocket on the SPICE port: the upgrade is sniffed from the first bytes, SPICE runs
in binary messages, bad WebSocket input closes only that connection.

trivmc's client speaks ws:// through the same `wsproto` layer; the raw tests drive
`wsproto` directly to send what a browser could send.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from trivmc.backends import EchoBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.client.address import Address
from trivmc.client.connection import link_channel
from trivmc.protocol import ChannelType, ClientLink, Linked, LinkError, LinkReplyReceived, MainCap
from trivmc.server import Server, ServerConfig
from trivmc.transport import WebSocketError

from .test_bad_input import ECHO, settle, still_serves
from .test_tls import echo

PAYLOAD = bytes(range(251)) * 4177  # ~1 MiB


@asynccontextmanager
async def ws_serving(**kw: object) -> AsyncIterator[tuple[Server, int]]:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, **kw))  # type: ignore[arg-type]
    server.add_port(ECHO, EchoBackend())
    server.add_usbredir(EchoBackend())
    async with server as addrs:
        yield server, addrs[0][1]  # type: ignore[index]


async def test_port_echo_over_websocket_without_lz4_or_usbredir() -> None:
    async with ws_serving() as (server, port):
        async with connect(f"ws://127.0.0.1:{port}") as session:
            assert (ChannelType.PORT, 0) in session.channels
            assert (ChannelType.USBREDIR, 0) not in session.channels  # not offered
            ch = await session.open_port(ECHO)
            assert ch.opened is True
            assert await echo(ch, PAYLOAD) == PAYLOAD
            assert not ch.lz4_out  # LZ4 is not offered over WebSocket
        stats = server.channels[(ChannelType.PORT, 0)].device.stats
        assert stats.in_compressed == 0 and stats.out_compressed == 0
        assert stats.in_data == len(PAYLOAD)
        device = server.channels[(ChannelType.PORT, 0)].device
        await settle(lambda: device.idle and device.client is None)
        assert device.tokens_free == 128 and device.outstanding_buffers == 0
        # the same port still speaks plain SPICE, with LZ4
        async with connect(f"spice://127.0.0.1:{port}") as session:
            assert (ChannelType.USBREDIR, 0) in session.channels
            ch = await session.open_port(ECHO)
            assert ch.lz4_out


async def test_usbredir_link_over_websocket_refused() -> None:
    async with ws_serving() as (_, port):
        async with connect(f"ws://127.0.0.1:{port}") as session:
            addr = Address(host="127.0.0.1", port=port, websocket=True)
            with pytest.raises(SpiceLinkError) as e:
                await link_channel(addr, session.session_id, ChannelType.USBREDIR, 0, [], None)
            assert e.value.code == LinkError.CHANNEL_NOT_AVAILABLE


async def test_websocket_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    async with ws_serving(websocket=False) as (server, port):
        with pytest.raises(WebSocketError):
            async with connect(f"ws://127.0.0.1:{port}"):
                pass
        assert "INVALID_MAGIC" in caplog.text and server.links_refused == 1
        await still_serves(f"spice://127.0.0.1:{port}", server)


class RawWs:
    """A wsproto client over a trio TCP stream, for sending what a browser might."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def events(self) -> list[Event]:
        """Events from the next socket read ([] at EOF)."""
        data = await self.stream.receive_some(65536)
        if not data:
            return []
        self.ws.receive_data(bytes(data))
        return list(self.ws.events())

    async def until(self, kind: type[Event]) -> tuple[Event, bytes]:
        """Read until an event of `kind`; also return the binary data seen before it."""
        got = b""
        with trio.fail_after(10):
            while True:
                evs = await self.events()
                assert evs or kind is type(None), "connection closed"
                for ev in evs:
                    if isinstance(ev, BytesMessage):
                        got += ev.data
                    if isinstance(ev, kind):
                        return ev, got


@asynccontextmanager
async def raw_ws(port: int) -> AsyncIterator[RawWs]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        client = RawWs(stream)
        await client.send(Request(host="127.0.0.1", target="/", subprotocols=["binary"]))
        ev, _ = await client.until(AcceptConnection)
        assert isinstance(ev, AcceptConnection) and ev.subprotocol == "binary"
        yield client


async def test_link_in_fragments_ping_answered() -> None:
    """The link message cut into 1-byte fragments of one message and spread over
    messages, with a ping in between: the server links and answers the ping."""
    async with ws_serving() as (_, port):
        async with raw_ws(port) as client:
            link = ClientLink(0, ChannelType.MAIN, 0, [MainCap.NAME_AND_UUID], None)
            data = link.initiate()
            for i, b in enumerate(data[:10]):
                await client.send(BytesMessage(data=bytes([b]), message_finished=i == 9))
            await client.send(Ping(payload=b"are you there"))
            await client.send(BytesMessage(data=data[10:]))
            linked = False
            pong = False
            with trio.fail_after(10):
                while not (linked and pong):
                    evs = await client.events()
                    assert evs, "server closed"
                    for ev in evs:
                        if isinstance(ev, Pong):
                            assert ev.payload == b"are you there"
                            pong = True
                        elif isinstance(ev, BytesMessage):
                            for lev in link.feed(ev.data):
                                linked = linked or isinstance(lev, Linked)
                                if isinstance(lev, LinkReplyReceived):
                                    await client.send(BytesMessage(data=lev.data))
            assert linked


async def test_text_message_closes_with_1003(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ws_serving() as (server, port):
        async with raw_ws(port) as client:
            await client.send(TextMessage(data="REDQ"))
            ev, _ = await client.until(CloseConnection)
            assert isinstance(ev, CloseConnection) and ev.code == 1003
        assert "text message" in caplog.text
        await still_serves(f"spice://127.0.0.1:{port}", server)


async def test_bad_link_over_websocket_gets_link_error() -> None:
    async with ws_serving() as (server, port):
        async with raw_ws(port) as client:
            await client.send(BytesMessage(data=b"XXXX" + bytes(40)))
            _, got = await client.until(CloseConnection)
            assert struct.unpack_from("<I", got, 16)[0] == LinkError.INVALID_MAGIC
        assert server.links_refused == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no upgrade
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n",  # oversized
        b"GET garbage\r\n\r\n",
    ],
    ids=["no-upgrade", "oversized", "garbage"],
)
async def test_bad_upgrade_refused(request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ws_serving() as (server, port):
        async with await trio.open_tcp_stream("127.0.0.1", port) as s:
            with trio.fail_after(10):
                try:
                    await s.send_all(request_bytes)
                except trio.BrokenResourceError:
                    pass  # the server may close before reading it all
                reply = b""
                try:
                    while chunk := await s.receive_some(4096):
                        reply += chunk
                except trio.BrokenResourceError:
                    pass
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
        assert "bad HTTP upgrade" in caplog.text or "upgrade request longer" in caplog.text
        await still_serves(f"spice://127.0.0.1:{port}", server)


async def test_client_vanishes_mid_message_counters_idle() -> None:
    """A WebSocket client that drops the TCP connection mid SPICE message (no close
    frame) releases everything."""
    async with ws_serving() as (server, port):
        async with connect(f"ws://127.0.0.1:{port}") as session:
            ch = await session.open_port(ECHO)
            assert await echo(ch, b"hello") == b"hello"
            await ch.conn.send_raw(b"\x65\x00\x00\x10\x00\x00partial")  # DATA, 4 KiB claimed
            await trio.aclose_forcefully(ch.conn.stream.transport)  # type: ignore[attr-defined]
        device = server.channels[(ChannelType.PORT, 0)].device
        await settle(lambda: device.idle and device.client is None)
        assert device.tokens_free == 128 and device.outstanding_buffers == 0
        await still_serves(f"spice://127.0.0.1:{port}", server)


async def test_rejected_upgrade_seen_by_client() -> None:
    """trivmc's client reports a server that answers the upgrade with an HTTP error."""

    async def http_400(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(bytes(await stream.receive_some(65536)))
        assert any(isinstance(e, Request) for e in ws.events())
        await stream.send_all(ws.send(RejectConnection(status_code=403)))
        await stream.aclose()

    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), http_400, 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(Exception, match="HTTP 403"):
            async with connect(f"ws://127.0.0.1:{port}"):
                pass
        n.cancel_scope.cancel()
