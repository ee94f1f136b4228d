"""The smallest trivmc server: a SPICE port channel served by a Python coroutine.

Run it, then connect a SPICE client beside it:

    python examples/echo_port_server.py            # serves spice://127.0.0.1:5930
    trivmc connect spice://127.0.0.1:5930 --port org.example.upper.0
    (or remote-viewer spice://127.0.0.1:5930 and open the port from your application)

Every line a client sends comes back upper-cased. The coroutine gets the bytes the
client sends through a memory channel and answers with `chardev.send()`.
"""

from __future__ import annotations

import argparse
import logging

import trio

from trivmc.chardev import ChrEvent, SpiceChardev
from trivmc.server import Server, ServerConfig


class CoroutineBackend:
    """A chardev backend whose behaviour is the `handle()` coroutine below."""

    def __init__(self) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes](64)

    # --- the chardev side: called by trivmc, must not block ---
    def can_read(self) -> int:
        # room for one more chunk? (when full, client data waits in trivmc's queue)
        stats = self.inbox_send.statistics()
        return 1 << 16 if stats.current_buffer_used < stats.max_buffer_size else 0

    def read(self, data: memoryview) -> None:
        self.inbox_send.send_nowait(bytes(data))

    def event(self, event: ChrEvent) -> None:
        logging.info("client event: %s", event.name)

    async def run(self, chardev: SpiceChardev) -> None:
        chardev.set_fe_open(True)  # the port is open: clients see PORT_INIT opened
        await self.handle(chardev)

    # --- the application ---
    async def handle(self, chardev: SpiceChardev) -> None:
        async for data in self.inbox:
            await chardev.send(data.upper())
            chardev.accept_input()  # room again: let trivmc hand us more


async def main(host: str, port: int) -> None:
    server = Server(ServerConfig(listen=[(host, port)]))
    server.add_port("org.example.upper.0", CoroutineBackend())
    async with server as addresses:
        print(f"serving spice://{host}:{addresses[0][1]}", flush=True)  # type: ignore[index]
        await trio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5930)
    a = p.parse_args()
    try:
        trio.run(main, a.host, a.port)
    except KeyboardInterrupt:
        pass
