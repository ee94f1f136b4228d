"""One trivmc process serving SERVERS x PORTS echo port channels, for the live-sessions row.

    python benchmarks/many_ports_server.py BASE_PORT SERVERS PORTS

A SPICE channel id is one byte, so one SPICE server holds at most 256 port channels;
1000 port sessions are therefore 4 servers of 250 ports (listening on BASE_PORT,
BASE_PORT+1, ...) in this one process and one trio run, each with `multi_session` (a
session per port). Prints `LISTENING` when all accept.

With TRIVMC_BENCH_PROFILE=FILE in its environment it profiles itself with cProfile from
SIGUSR1 to SIGUSR2 and then writes the stats to FILE (the sessions row sends the two
around its echo rounds; read FILE with `python -m pstats`). The profiler slows the
server: such a run's figures are not the server's.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from contextlib import AsyncExitStack
from types import FrameType

import trio

from trivmc.backends import EchoBackend
from trivmc.server import Server, ServerConfig


async def main(base: int, servers: int, ports: int) -> None:
    async with AsyncExitStack() as stack:
        for s in range(servers):
            config = ServerConfig(listen=[("127.0.0.1", base + s)], multi_session=True)
            server = Server(config)
            for p in range(ports):
                server.add_port(f"org.trivmc.bench.{s}.{p}", EchoBackend())
            await stack.enter_async_context(server)
        print("LISTENING", flush=True)
        await trio.sleep_forever()


def profile_on_signals(path: str) -> None:
    """cProfile the process from SIGUSR1 to SIGUSR2, then write the stats to `path`."""
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(path + ".part")
        os.replace(path + ".part", path)  # whole when it appears

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    if os.environ.get("TRIVMC_BENCH_PROFILE"):
        profile_on_signals(os.environ["TRIVMC_BENCH_PROFILE"])
    try:
        trio.run(main, int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    except KeyboardInterrupt:
        pass
