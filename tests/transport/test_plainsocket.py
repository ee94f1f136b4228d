"""The plain-socket fast path's receive buffers: shared by every connection of a trio
run, at most `SHARED_BUFFERS` of them, never reused while a view of a read is alive."""

from __future__ import annotations

import socket

import trio
import trio.testing

from trivmc.transport.plainsocket import (
    SHARED_BUFFERS,
    PlainSocketIO,
    receive_buffers,
    stream_io,
)

CHUNK = 200 * 1024


def pair() -> tuple[PlainSocketIO, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    io = stream_io(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    assert isinstance(io, PlainSocketIO)
    return io, b


async def test_a_live_view_is_never_overwritten_and_a_dead_one_is_reused() -> None:
    io, peer = pair()
    peer.sendall(b"b" * CHUNK)
    kept = await io.receive(1 << 20)
    assert isinstance(kept, memoryview) and set(bytes(kept)) == {ord("b")}
    peer.sendall(b"c" * CHUNK)
    other = await io.receive(1 << 20)
    assert isinstance(other, memoryview) and other.obj is not kept.obj  # kept is alive
    assert set(bytes(kept)) == {ord("b")}  # and untouched
    del kept, other
    peer.sendall(b"d" * CHUNK)
    again = await io.receive(1 << 20)
    assert isinstance(again, memoryview) and set(bytes(again)) == {ord("d")}
    shared = receive_buffers().buffers
    assert len(shared) == 2 and any(again.obj is b for b in shared)  # reused, not new
    del again, shared
    peer.close()
    assert await io.receive(10) == b""
    io.forget()


async def test_connections_share_a_bounded_number_of_buffers() -> None:
    pairs = [pair() for _ in range(SHARED_BUFFERS + 3)]
    held = []
    for i, (io, peer) in enumerate(pairs):
        peer.sendall(bytes([i]) * 1000)
        held.append(await io.receive(1 << 20))  # every view kept alive
    assert len(receive_buffers().buffers) == SHARED_BUFFERS
    assert [bytes(h) for h in held] == [bytes([i]) * 1000 for i in range(len(pairs))]
    assert all(isinstance(h, bytes) for h in held[SHARED_BUFFERS:])  # beyond: fresh bytes
    del held
    for io, peer in pairs:  # views dropped at once: one buffer serves all
        peer.sendall(b"x")
        got = await io.receive(10)
        assert isinstance(got, memoryview) and got.obj is receive_buffers().buffers[0]
        del got
        peer.close()
        io.forget()
