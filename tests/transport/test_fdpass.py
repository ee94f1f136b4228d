"""The handover's message channel (trivmc/transport/fdpass.py): JSON with descriptors
over SOCK_SEQPACKET, raw bytes in bounded runs, and no descriptor leaked by a bad
message."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from trivmc.transport import fdpass


def pair() -> tuple[fdpass.FdChannel, fdpass.FdChannel]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return fdpass.FdChannel(a), fdpass.FdChannel(b)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_passed_socket_is_the_same_connection() -> None:
    left, right = pair()
    x, y = socket.socketpair()
    await left.send({"t": "peer", "n": 1}, [x])
    x.close()  # the receiver holds its own descriptor of the same connection
    msg, (got,) = await right.receive()
    assert msg == {"t": "peer", "n": 1}
    y.sendall(b"still connected")
    assert got.recv(100) == b"still connected"
    got.close()
    y.close()
    left.close()
    right.close()


async def test_bytes_arrive_whole_across_chunks() -> None:
    left, right = pair()
    data = os.urandom(3 * fdpass.CHUNK + 17)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_bytes, data)
        assert await right.receive_bytes(len(data), len(data)) == data
    left.close()
    right.close()


async def test_an_announced_size_over_its_bound_is_refused_before_reading() -> None:
    left, right = pair()
    await left.send_bytes(b"x" * 10)
    with pytest.raises(fdpass.HandoverProtocolError, match="bound"):
        await right.receive_bytes(11, 10)
    assert await right.receive_bytes(10, 10) == b"x" * 10  # nothing was read
    left.close()
    right.close()


async def test_a_bad_message_closes_its_descriptors() -> None:
    left, right = pair()
    x, y = socket.socketpair()
    before = open_fds()
    await left.sock.sendmsg(
        [b"Jnot json"],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, x.fileno().to_bytes(4, "little"))],
    )
    with pytest.raises(fdpass.HandoverProtocolError, match="bad JSON"):
        await right.receive()
    assert open_fds() == before  # the received duplicate was closed
    await left.send_bytes(b"raw")
    with pytest.raises(fdpass.HandoverProtocolError, match="JSON message"):
        await right.receive()
    for s in (x, y):
        s.close()
    left.close()
    with pytest.raises(EOFError):
        await right.receive()
    right.close()


async def test_a_message_over_the_bound_is_refused_by_the_sender() -> None:
    left, right = pair()
    with pytest.raises(ValueError, match="bound"):
        await left.send({"big": "y" * fdpass.MAX_MESSAGE})
    left.close()
    right.close()
