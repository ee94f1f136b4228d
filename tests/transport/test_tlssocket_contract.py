"""`TLSSocketStream` (TLS on the socket's fd) against trio's generic stream checks,
and its errors: a client that does not trust the server, and a peer that is not TLS.

Both ends are the class under test, over a real socketpair, with `trustme` certificates.
The clogged pair has tiny socket buffers, so a large send really blocks.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing
import trustme

from trivmc.transport import client_tls_context
from trivmc.transport.tlssocket import TLSSocketStream

Pair = tuple[trio.abc.Stream, trio.abc.Stream]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = client_tls_context()
    ca.configure_trust(client)
    return server, client


async def tls_pair(
    ca: trustme.CA, bufsize: int | None = None
) -> tuple[TLSSocketStream, TLSSocketStream]:
    a, b = socket.socketpair()
    if bufsize is not None:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    server_ctx, client_ctx = contexts(ca)
    client = TLSSocketStream.wrap(
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        client_ctx,
        server_side=False,
        server_hostname="localhost",
    )
    server = TLSSocketStream.wrap(
        trio.SocketStream(trio.socket.from_stdlib_socket(b)), server_ctx, server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def test_tls_socket_stream_is_a_trio_stream(ca: trustme.CA) -> None:
    """No clogged maker: clogging a TLS socket takes a write OpenSSL holds half done,
    which the next write must repeat; the blocking send is checked below instead."""

    async def make() -> Pair:
        return await tls_pair(ca)

    await trio.testing.check_two_way_stream(make, None)


async def test_a_large_send_waits_for_the_reader_and_arrives_whole(ca: trustme.CA) -> None:
    client, server = await tls_pair(ca, bufsize=4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than the sockets hold
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        await trio.testing.wait_all_tasks_blocked()
        assert not got  # the sender waits for room
        with trio.fail_after(10):
            while len(got) < len(payload):
                got += await server.receive_some(65536)
    assert got == payload
    await client.aclose()
    assert await server.receive_some(10) == b""
    await server.aclose()


async def test_untrusted_server_fails_the_handshake_with_its_cause(ca: trustme.CA) -> None:
    a, b = socket.socketpair()
    server_ctx, _ = contexts(ca)
    stranger = client_tls_context()
    trustme.CA().configure_trust(stranger)  # not the CA that signed the server
    client = TLSSocketStream.wrap(
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        stranger,
        server_side=False,
        server_hostname="localhost",
    )
    server = TLSSocketStream.wrap(
        trio.SocketStream(trio.socket.from_stdlib_socket(b)), server_ctx, server_side=True
    )
    errors: list[BaseException] = []

    async def shake(s: TLSSocketStream) -> None:
        try:
            await s.do_handshake()
        except trio.BrokenResourceError as e:
            errors.append(e)
            await s.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shake, client)
        nursery.start_soon(shake, server)
    assert any(isinstance(e.__cause__, ssl.SSLCertVerificationError) for e in errors)


async def test_a_peer_that_is_not_tls_breaks_the_handshake(ca: trustme.CA) -> None:
    a, b = socket.socketpair()
    server_ctx, _ = contexts(ca)
    server = TLSSocketStream.wrap(
        trio.SocketStream(trio.socket.from_stdlib_socket(b)), server_ctx, server_side=True
    )
    a.sendall(b"REDQ" + bytes(100))  # SPICE on the TLS port
    a.close()
    with pytest.raises(trio.BrokenResourceError) as info:
        await server.do_handshake()
    assert isinstance(info.value.__cause__, (ssl.SSLError, OSError))
    await server.aclose()


async def test_write_now_that_openssl_leaves_half_done_is_repeated_once(ca: trustme.CA) -> None:
    """A write_now the socket cannot take returns 0 and leaves `must_repeat`; the next
    send_all, starting with the same bytes, completes it: every byte arrives once."""
    client, server = await tls_pair(ca, bufsize=4096)
    assert client.write_now(b"small") == 5 and client.must_repeat == 0
    big = bytes(range(256)) * 2048  # 512 KiB: far more than the socket holds
    assert client.write_now(big) == 0
    assert client.must_repeat == len(big)
    assert client.write_now(b"later") == 0  # nothing may overtake it
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, big + b"after")
        with trio.fail_after(10):
            while len(got) < 5 + len(big) + 5:
                got += await server.receive_some(65536)
    assert bytes(got) == b"small" + big + b"after" and client.must_repeat == 0
    await client.aclose()
    await server.aclose()
