"""The plain-socket fast path's receive buffer: reused while the peer streams, never
while a view of the last read is alive, and dropped while the connection waits."""

from __future__ import annotations

import socket

import trio
import trio.testing

from trivmc.transport.plainsocket import PlainSocketIO, stream_io

CHUNK = 200 * 1024


def pair() -> tuple[PlainSocketIO, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    io = stream_io(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    assert isinstance(io, PlainSocketIO)
    return io, b


async def read_exactly(io: PlainSocketIO, n: int) -> list[bytes | memoryview]:
    got: list[bytes | memoryview] = []
    while sum(map(len, got)) < n:
        got.append(await io.receive(1 << 20))
    return got


async def test_a_live_view_is_never_overwritten_and_a_dead_one_is_reused() -> None:
    io, peer = pair()
    peer.sendall(b"a" * CHUNK)
    first = await read_exactly(io, CHUNK)
    assert all(isinstance(d, bytes) for d in first)  # after a wait: a plain read
    del first
    peer.sendall(b"b" * CHUNK)
    kept = await io.receive(1 << 20)  # streaming now: a view of the reused buffer
    assert isinstance(kept, memoryview) and set(bytes(kept)) == {ord("b")}
    peer.sendall(b"c" * CHUNK)
    other = await io.receive(1 << 20)
    assert isinstance(other, memoryview) and other.obj is not kept.obj  # kept is alive
    assert set(bytes(kept)) == {ord("b")}  # and untouched
    buffer = other.obj
    del kept, other
    peer.sendall(b"d" * CHUNK)
    again = await io.receive(1 << 20)
    assert isinstance(again, memoryview) and again.obj is buffer  # nothing held it: reused
    assert set(bytes(again)) == {ord("d")}
    del again, buffer
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.receive, 1 << 20)
        await trio.testing.wait_all_tasks_blocked()
        assert io.held_buffer == 0  # waiting holds no buffer
        peer.sendall(b"e")
    peer.close()
    assert await io.receive(10) == b""
    io.forget()
