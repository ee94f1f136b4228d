"""The soak's backend peer: an echo service the soak can make stall and drop.

    python -m benchmarks.soak_peer --slots N [--rcvbuf BYTES]

Every slot (one per port channel of the soak server) has a listening port of its own on
127.0.0.1, so the peer knows which channel a backend connection serves. Once all listen
it prints `PORTS [p0, p1, ...]` (JSON), then echoes what each connection sends and
takes commands, one a line, on stdin:

    stall SLOT SECONDS   stop reading and echoing SLOT's connections for that long
                         (a connection that comes meanwhile waits too), then go on
    drop SLOT HOW        close SLOT's connections now, whatever is in flight: HOW is
                         `fin` (shut down our side, drain, close: no RST) or `rst`
                         (SO_LINGER 0 and close: RST, as a peer that crashed)
    report               one JSON line on stdout: connections, bytes, stalls, drops

It exits at the end of stdin. Accepted sockets get a small receive buffer (`--rcvbuf`)
so that a stall pushes back on the server's queues soon instead of filling the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct

import trio

from .soak_common import raise_nofile_limit, reply, stdin_lines

RECEIVE = 65536
DROP_DRAIN = 5.0  # seconds a `fin` drop waits for the server to close its side


class Connection:
    """One backend connection; `drop` ends its echo loop and says how to close it."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.close_with: str | None = None  # "fin" or "rst" once dropped


class Slot:
    """One channel's listening port and its live connections."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.stalled_until = 0.0
        self.connections: set[Connection] = set()

    def stall(self, seconds: float) -> None:
        self.stalled_until = max(self.stalled_until, trio.current_time() + seconds)

    async def wait_unstalled(self) -> None:
        while trio.current_time() < self.stalled_until:  # a stall may be extended
            await trio.sleep_until(self.stalled_until)

    def drop(self, how: str) -> int:
        """Close every connection of this slot (`fin` or `rst`); how many there were."""
        for conn in self.connections:
            conn.close_with = how
            conn.scope.cancel()
        return len(self.connections)


class Peer:
    def __init__(self, slots: int, rcvbuf: int) -> None:
        self.slots = [Slot(i) for i in range(slots)]
        self.rcvbuf = rcvbuf
        self.stats = {
            "connections": 0,
            "bytes_echoed": 0,
            "stalls": 0,
            "drops_fin": 0,
            "drops_rst": 0,
            "drops_missed": 0,
            "connection_errors": 0,
        }

    async def listen(self) -> list[tuple[trio.SocketListener, int]]:
        """A listener on 127.0.0.1 for every slot, with the port it got."""
        out = []
        for _ in self.slots:
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.rcvbuf:  # before listen(): accepted sockets inherit it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            await sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            out.append((trio.SocketListener(sock), sock.getsockname()[1]))
        return out

    async def echo(self, stream: trio.SocketStream, slot: Slot) -> None:
        self.stats["connections"] += 1
        conn = Connection()
        slot.connections.add(conn)
        with conn.scope:
            try:
                while True:
                    await slot.wait_unstalled()
                    data = await stream.receive_some(RECEIVE)
                    if not data:
                        break
                    await slot.wait_unstalled()
                    await stream.send_all(data)
                    self.stats["bytes_echoed"] += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.stats["connection_errors"] += 1
        slot.connections.discard(conn)
        await self.close(stream, conn.close_with)

    async def close(self, stream: trio.SocketStream, how: str | None) -> None:
        """`rst`: SO_LINGER 0, so closing sends RST at once (a peer that crashed). `fin`:
        shut our side (FIN), read and discard until the server closes its side (at most
        DROP_DRAIN), then close: no RST whatever was in flight. Otherwise just close."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            if how == "rst":
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "fin":
                await stream.send_eof()
                with trio.move_on_after(DROP_DRAIN):
                    while await stream.receive_some(RECEIVE):
                        pass
        await trio.aclose_forcefully(stream)

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "stall":
            self.slots[int(words[1])].stall(float(words[2]))
            self.stats["stalls"] += 1
        elif words[0] == "drop" and words[2] in ("fin", "rst"):
            if self.slots[int(words[1])].drop(words[2]):
                self.stats[f"drops_{words[2]}"] += 1
            else:
                self.stats["drops_missed"] += 1
        elif words[0] == "report":
            reply(json.dumps(self.stats))
        else:
            raise ValueError(f"unknown command {line!r}")

    async def serve_slot(self, slot: Slot, listener: trio.SocketListener) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                with_nodelay(stream)
                nursery.start_soon(self.echo, stream, slot)


def with_nodelay(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


async def main(slots: int, rcvbuf: int) -> None:
    raise_nofile_limit()
    peer = Peer(slots, rcvbuf)
    listeners = await peer.listen()
    commands = stdin_lines()
    async with trio.open_nursery() as nursery:
        for slot, (listener, _) in zip(peer.slots, listeners, strict=True):
            nursery.start_soon(peer.serve_slot, slot, listener)
        reply("PORTS " + json.dumps([port for _, port in listeners]))
        while (line := await commands.readline()) is not None:
            peer.command(line)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--rcvbuf", type=int, default=32 * 1024)
    a = p.parse_args()
    try:
        trio.run(main, a.slots, a.rcvbuf)
    except KeyboardInterrupt:
        pass
