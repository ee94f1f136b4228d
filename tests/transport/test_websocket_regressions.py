"""Regressions the fuzzer found in `trivmc.transport.websocket` (tests/fuzz)."""

from __future__ import annotations

import base64
import hashlib

import pytest
import trio
import trio.testing

from trivmc.transport import WebSocketError, accept_websocket, connect_websocket
from trivmc.transport.websocket import WebSocketStream

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_accept_without_initial_bytes_reads_the_whole_request() -> None:
    """`initial=b""` (the default) was fed to wsproto, which h11 takes as the end of the
    stream: the request read next raised RuntimeError ("received close, then received
    more data?") instead of opening the stream."""
    ours, peer = trio.testing.memory_stream_pair()
    await peer.send_all(REQUEST)
    stream = await accept_websocket(ours)
    assert isinstance(stream, WebSocketStream)
    answer = await peer.receive_some()
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer  # RFC 6455's example key


async def test_non_ascii_host_is_a_bad_request() -> None:
    """wsproto decodes the Host header as IDNA: a non-ASCII byte there raised
    UnicodeDecodeError out of `accept_websocket` (logged as an internal error) instead
    of a 400 answer and `WebSocketError`."""
    ours, peer = trio.testing.memory_stream_pair()
    await peer.send_all(REQUEST.replace(b"Host: h", b"Host: h\xdaj"))
    with pytest.raises(WebSocketError, match="bad HTTP upgrade"):
        await accept_websocket(ours, b"")
    answer = await peer.receive_some()
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_non_ascii_response_header_is_a_bad_response() -> None:
    """wsproto decodes the server's Connection/Upgrade headers as ASCII: a non-ASCII
    byte there raised UnicodeDecodeError out of `connect_websocket` instead of
    `WebSocketError`."""
    ours, peer = trio.testing.memory_stream_pair()

    async def server() -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await peer.receive_some()
        await peer.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Up\xb1grade\r\nSec-WebSocket-Accept: x\r\n\r\n"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with pytest.raises(WebSocketError, match="bad HTTP upgrade response"):
            await connect_websocket(ours, "h")


async def test_frames_with_the_response_reach_the_stream() -> None:
    """A binary frame sent in the same segment as the 101 answer is read by the client
    stream (an event list taken whole during the handshake would swallow it)."""
    ours, peer = trio.testing.memory_stream_pair()

    async def server() -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await peer.receive_some()
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        token = base64.b64encode(hashlib.sha1(key + GUID).digest())
        await peer.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + token + b"\r\n\r\n"
            b"\x82\x05hello"
        )
        await peer.send_eof()  # a swallowed frame then reads as the end, not a hang

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        stream = await connect_websocket(ours, "h")
        assert await stream.receive_some() == b"hello"
