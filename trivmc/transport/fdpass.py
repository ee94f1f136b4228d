"""Messages with file descriptors between two trivmc processes on one host (the
handover, docs/handover.md): a unix SOCK_SEQPACKET connection, so every message keeps
its bounds and its descriptors arrive with it (SCM_RIGHTS).

A message is one JSON object (`b"J" + JSON`, at most MAX_MESSAGE bytes), with up to
MAX_FDS descriptors; raw bytes travel as `b"B" + bytes` messages after the JSON that
announces their size, so nothing is base64'd and nothing is sized by the sender
alone: the receiver bounds every announced size before it reads.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

import trio

MAX_MESSAGE = 64 * 1024
MAX_FDS = 64
CHUNK = MAX_MESSAGE - 1


class HandoverProtocolError(Exception):
    """The other process sent something that is not a handover message."""


class FdChannel:
    """One end of a SOCK_SEQPACKET unix connection: JSON messages with descriptors.

    Guarantees: every descriptor received is returned as an open `socket.socket`
    owned by the caller (none leaks on a bad message: they are closed before the
    error is raised); a message or a byte run over its bound is an error, read no
    further."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("an FdChannel needs a SOCK_SEQPACKET unix socket")
        self.sock = sock

    async def send(
        self, msg: dict[str, Any], socks: Sequence[socket.socket | trio.socket.SocketType] = ()
    ) -> None:
        """Send `msg` with duplicates of `socks` (the caller keeps its own)."""
        data = b"J" + json.dumps(msg, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"a handover message of {len(data)} bytes (bound {MAX_MESSAGE})")
        if len(socks) > MAX_FDS:
            raise ValueError(f"{len(socks)} descriptors in one message (bound {MAX_FDS})")
        anc = []
        if socks:
            fds = array.array("i", [s.fileno() for s in socks])
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
        await self.sock.sendmsg([data], anc)

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send raw bytes (announced by the message before them) in chunks."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            await self.sock.sendmsg([b"B", view[start : start + CHUNK]])

    async def receive(self) -> tuple[dict[str, Any], list[socket.socket]]:
        """The next JSON message and its descriptors; EOFError when the other end
        closed; HandoverProtocolError for anything malformed."""
        data, socks = await self._receive_one(MAX_FDS)
        try:
            if data[:1] != b"J":
                raise HandoverProtocolError("expected a JSON message")
            try:
                msg = json.loads(data[1:])
            except ValueError as e:
                raise HandoverProtocolError(f"bad JSON: {e}") from e
            if not isinstance(msg, dict):
                raise HandoverProtocolError("a handover message is a JSON object")
        except BaseException:
            for s in socks:
                s.close()
            raise
        return msg, socks

    async def receive_bytes(self, size: int, bound: int) -> bytes:
        """Exactly `size` raw bytes, refused over `bound` before any is read."""
        if not 0 <= size <= bound:
            raise HandoverProtocolError(f"{size} bytes announced (bound {bound})")
        out = bytearray()
        while len(out) < size:
            data, _ = await self._receive_one(0)
            if data[:1] != b"B" or len(out) + len(data) - 1 > size:
                raise HandoverProtocolError("the announced bytes do not follow")
            out += memoryview(data)[1:]
        return bytes(out)

    async def _receive_one(self, max_fds: int) -> tuple[bytes, list[socket.socket]]:
        anc_size = socket.CMSG_SPACE(max(1, max_fds) * array.array("i").itemsize)
        data, anc, flags, _ = await self.sock.recvmsg(MAX_MESSAGE + 1, anc_size)
        socks = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                socks += [_adopt_fd(fd) for fd in fds]
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or (socks and max_fds == 0):
            for s in socks:
                s.close()
            raise HandoverProtocolError("a handover message over its bound")
        if not data:
            for s in socks:
                s.close()
            raise EOFError("the other process closed the handover connection")
        return data, socks

    def close(self) -> None:
        self.sock.close()


def _adopt_fd(fd: int) -> socket.socket:
    """A received descriptor as a socket (family and type read from the kernel)."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def connect(path: str) -> FdChannel:
    """Connect to a handover socket at `path`."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return FdChannel(sock)
