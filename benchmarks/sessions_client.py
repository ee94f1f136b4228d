"""Many live sessions at once: the load client of the 1000-session benchmark row.

    python sessions_client.py spice --port P --per-server 250 --sessions 1000 --bytes 65536
    python sessions_client.py raw   --port P --sessions 1000 --bytes 65536

`spice` links, for session k, a main channel and port channel id k % PER_SERVER on the
server at port P + k // PER_SERVER (trivmc's client library, one trio process); `raw`
opens plain TCP connections to the pump's echo server at P instead. Once all are
linked it prints `CONNECTED n` and waits for a line on stdin (the harness reads the
server's RSS then); each round every session sends `--bytes` in
4 KiB writes through its echo device and reads them all back, concurrently; then one
JSON line gives each round's aggregate MB/s (bytes sent and received back / time),
and the sessions stay open until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from trivmc.client import connect
from trivmc.protocol import ChannelType

WRITE = 4096
CONCURRENT_LINKS = 32

Pipe = tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[bytes]]]


@asynccontextmanager
async def open_spice(a: argparse.Namespace, k: int) -> AsyncIterator[Pipe]:
    port = a.port + k // a.per_server
    async with connect(f"spice://127.0.0.1:{port}", lz4=False) as session:
        channel = await session.open_channel(ChannelType.PORT, k % a.per_server)
        await channel.wait_port_init()
        yield channel.send_all, channel.receive_some


@asynccontextmanager
async def open_raw(a: argparse.Namespace, k: int) -> AsyncIterator[Pipe]:
    async with await trio.open_tcp_stream("127.0.0.1", a.port) as stream:
        yield stream.send_all, stream.receive_some


async def echo_once(pipe: Pipe, data: bytes) -> None:
    send, receive = pipe
    got = 0

    async def reader() -> None:
        nonlocal got
        while got < len(data):
            chunk = await receive()
            if not chunk:
                raise ConnectionError("echo closed early")
            got += len(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for off in range(0, len(data), WRITE):
            await send(data[off : off + WRITE])


async def main(a: argparse.Namespace) -> None:
    opener = open_spice if a.kind == "spice" else open_raw
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    pipes: list[Pipe] = []
    limit = trio.Semaphore(CONCURRENT_LINKS)
    all_linked = trio.Event()
    done = trio.Event()

    async def hold(k: int) -> None:
        """Session k lives in its own task (its client nursery must), until `done`;
        at most CONCURRENT_LINKS link at once."""
        await limit.acquire()
        linking = True
        try:
            async with opener(a, k) as pipe:
                limit.release()
                linking = False
                pipes.append(pipe)
                if len(pipes) == a.sessions:
                    all_linked.set()
                await done.wait()
        finally:
            if linking:
                limit.release()

    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for k in range(a.sessions):
            nursery.start_soon(hold, k)
        await all_linked.wait()
        link_secs = time.perf_counter() - t0
        print(f"CONNECTED {a.sessions} {link_secs:.3f}", flush=True)
        await stdin.receive_some(1)
        data = bytes(range(256)) * (a.bytes // 256)
        rounds = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            async with trio.open_nursery() as echoes:
                for pipe in pipes:
                    echoes.start_soon(echo_once, pipe, data)
            secs = time.perf_counter() - t0
            rounds.append(round(2 * len(data) * a.sessions / secs / 1e6, 2))
        print(json.dumps({"sessions": a.sessions, "link_secs": link_secs, "MBps": rounds}))
        sys.stdout.flush()
        while await stdin.receive_some(4096):
            pass
        done.set()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["spice", "raw"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--per-server", type=int, default=250)
    p.add_argument("--bytes", type=int, default=65536)
    p.add_argument("--rounds", type=int, default=5)
    trio.run(main, p.parse_args())
