"""A trivmc server whose port device is the anchor's `sink -N BYTES`: it counts what the
client sends and, each time BYTES have arrived, sends the client a 24-byte record
`TRIVDONE` + u64le byte count + u64le ns from the first to the last byte.

    python benchmarks/sink_server.py 127.0.0.1:PORT PORTNAME BYTES
"""

from __future__ import annotations

import struct
import sys
import time

import trio

from trivmc.chardev import ChrEvent, SpiceChardev
from trivmc.server import Server, ServerConfig


class SinkBackend:
    def __init__(self, every: int) -> None:
        self.every = every
        self.count = 0
        self.first_ns = 0
        self.chardev: SpiceChardev | None = None

    def can_read(self) -> int:
        return 1 << 30

    def read(self, data: memoryview) -> None:
        now = time.perf_counter_ns()
        if self.count == 0:
            self.first_ns = now
        before = self.count // self.every
        self.count += len(data)
        if self.count // self.every > before and self.chardev is not None:
            record = b"TRIVDONE" + struct.pack("<QQ", self.count, now - self.first_ns)
            self.chardev.chr_write(record)

    def event(self, event: ChrEvent) -> None:
        if event == ChrEvent.CLOSED:
            self.count = 0

    async def run(self, chardev: SpiceChardev) -> None:
        self.chardev = chardev
        chardev.set_fe_open(True)
        await trio.sleep_forever()


async def main(listen: str, name: str, every: int) -> None:
    host, _, port = listen.rpartition(":")
    server = Server(ServerConfig(listen=[(host, int(port))]))
    server.add_port(name, SinkBackend(every))
    async with server:
        await trio.sleep_forever()


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    except KeyboardInterrupt:
        pass
