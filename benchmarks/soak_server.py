"""The soak's server process: SERVERS trivmc SPICE servers of port channels in one
process and one trio run, each port's backend a TCP connection to the soak's peer.

    python -m benchmarks.soak_server --per-server 250 --peer-ports P0,P1,... [--reconnect S]

A SPICE channel id is one byte, so one server holds at most 256 port channels: 1000
channels are 4 servers of 250 (as `many_ports_server.py`), with `multi_session`. Slot k
(port `org.trivmc.soak.k`) is channel id k % PER_SERVER of server k // PER_SERVER; its
backend is `tcp:127.0.0.1:PEER_PORT_k,reconnect=S` (connected when a client attaches).
Once every server accepts it prints `LISTENING [port, ...]` (JSON), then answers
commands, one a line, on stdin, each with one JSON line on stdout:

    report               `idle_report` now
    wait-idle SECONDS    `idle_report` once every counter is idle, or after SECONDS
    memory               Python's heap (allocated blocks)
    trim                 malloc_trim(0), then Python's heap (for after all clients left)

It logs warnings and errors to stderr and exits at the end of stdin.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio

from trivmc.backends import StreamBackend, TcpConnectBackend, parse_backend
from trivmc.server import Server, ServerConfig

from .soak_common import raise_nofile_limit, reply, stdin_lines

MAX_PROBLEMS = 40  # listed in a report (all are counted)
IDLE_POLL = 0.05
PRESSURE_POLL = 0.05

Counter = tuple[str, object, object]


def port_name(slot: int) -> str:
    return f"org.trivmc.soak.{slot}"


def idle_counters(servers: Sequence[Server]) -> list[Counter]:
    """(what, value now, value when idle) of every counter that must be back to idle
    once all clients have left. The one place these are gathered: a new counter of the
    server, channel, char device or backend gets its line here."""
    out: list[Counter] = []
    for i, server in enumerate(servers):
        out.append((f"server {i}: live sessions", len(server.sessions), 0))
        out.append((f"server {i}: pending links", server.pending_links, 0))
        for channel in server.channels.values():
            at = f"server {i} {channel.label}"
            device, chardev, client = channel.device, channel.chardev, channel.client
            out += [
                (f"{at}: channel.client is None", client is None, True),
                (f"{at}: device.client is None", device.client is None, True),
                (f"{at}: device.tokens_free", device.tokens_free, device.total_tokens),
                (f"{at}: device.outstanding_buffers", device.outstanding_buffers, 0),
                (f"{at}: device.queued_buffers", device.queued_buffers, 0),
                (f"{at}: device.buffered_bytes", device.buffered_bytes, 0),
                (f"{at}: device.idle", device.idle, True),
                (f"{at}: chardev.connected", chardev.connected, False),
                (f"{at}: chardev.pending_size", chardev.pending_size, 0),
            ]
            if client is not None:
                out.append((f"{at}: client.queued_bytes", client.queued_bytes, 0))
            backend = channel.backend
            if isinstance(backend, StreamBackend):
                out += [
                    (f"{at}: backend.client_attached", backend.client_attached, False),
                    (f"{at}: backend.peer is None", backend.peer is None, True),
                ]
    return out


def activity(servers: Sequence[Server]) -> dict[str, int]:
    """What the servers did (for the summary; none of it has to be idle)."""
    totals = {
        "connections": 0,
        "links_refused": 0,
        "clients_served": 0,
        "clients_refused": 0,
        "device_bytes_in": 0,
        "device_bytes_out": 0,
        "write_retries": 0,
        "peers_served": 0,
        "connect_failures": 0,
        "devices_busy": 0,
        "tokens_in_use": 0,
    }
    for server in servers:
        totals["connections"] += server.connections
        totals["links_refused"] += server.links_refused
        for channel in server.channels.values():
            device = channel.device
            totals["clients_served"] += channel.clients_served
            totals["clients_refused"] += channel.clients_refused
            totals["device_bytes_in"] += device.stats.written
            totals["device_bytes_out"] += device.stats.read
            totals["write_retries"] += device.write_retries
            totals["devices_busy"] += not device.idle
            totals["tokens_in_use"] += device.total_tokens - device.tokens_free
            backend = channel.backend
            if isinstance(backend, StreamBackend):
                totals["peers_served"] += backend.peers_served
            if isinstance(backend, TcpConnectBackend):
                totals["connect_failures"] += backend.connect_failures
    return totals


def idle_report(servers: Sequence[Server]) -> dict[str, Any]:
    """Every `idle_counters` counter checked: how many, and those not idle."""
    counters = idle_counters(servers)
    problems = [
        f"{what} = {value} (idle: {idle})" for what, value, idle in counters if value != idle
    ]
    return {
        "channels": sum(len(s.channels) for s in servers),
        "counters": len(counters),
        "not_idle": len(problems),
        "problems": problems[:MAX_PROBLEMS],
        "activity": activity(servers),
    }


async def wait_idle(servers: Sequence[Server], timeout: float) -> dict[str, Any]:
    """`idle_report` as soon as nothing is left to become idle, or after `timeout`
    (the server ends connections and closes backends in its own time after the last
    client left: a backend drains what it holds for up to a second first)."""
    t0 = time.monotonic()
    with trio.move_on_after(timeout):
        while idle_report(servers)["not_idle"]:
            await trio.sleep(IDLE_POLL)
    report = idle_report(servers)
    report["waited"] = round(time.monotonic() - t0, 3)
    return report


class Pressure:
    """How far backpressure went, sampled every PRESSURE_POLL s while the soak runs:
    the char devices that ran out of tokens (their client's socket reads stopped) and
    the longest device write queue seen."""

    def __init__(self, servers: Sequence[Server]) -> None:
        self.servers = servers
        self.out_of_tokens: set[tuple[int, int, int]] = set()
        self.peak_queue = 0

    async def run(self) -> None:
        while True:
            for i, server in enumerate(self.servers):
                for (ctype, cid), channel in server.channels.items():
                    device = channel.device
                    if device.tokens_free == 0:
                        self.out_of_tokens.add((i, ctype, cid))
                    self.peak_queue = max(self.peak_queue, device.queued_buffers)
            await trio.sleep(PRESSURE_POLL)  # a sampler's pace

    def snapshot(self) -> dict[str, int]:
        return {"devices_out_of_tokens": len(self.out_of_tokens), "peak_queue": self.peak_queue}


def memory(servers: Sequence[Server]) -> dict[str, int]:
    """Python's heap: blocks allocated by its allocator (objects and buffers alike).
    Flat while RSS grows means the C allocator holds freed memory, not a Python leak.
    And the payload bytes the server holds in flight right now (`held_bytes`)."""
    return {"python_blocks": sys.getallocatedblocks(), "held_bytes": held_bytes(servers)}


def held_bytes(servers: Sequence[Server]) -> int:
    """Payload in flight inside the server: client->device bytes buffered by the char
    devices and waiting in stream backends, device->client bytes pending in the
    frontends and queued for clients."""
    total = 0
    for server in servers:
        for channel in server.channels.values():
            total += channel.device.buffered_bytes + channel.chardev.pending_size
            if channel.client is not None:
                total += channel.client.queued_bytes
            if isinstance(channel.backend, StreamBackend):
                total += channel.backend.out_bytes
    return total


def trim() -> dict[str, int]:
    """glibc's malloc_trim(0): give freed heap memory back to the system (after all
    clients left, RSS then shows what the server still uses)."""
    gc.collect()
    libc = ctypes.CDLL(None)
    trimmed = int(libc.malloc_trim(0)) if hasattr(libc, "malloc_trim") else -1
    return {"python_blocks": sys.getallocatedblocks(), "trimmed": trimmed}


def build(peer_ports: Sequence[int], per_server: int, reconnect: float) -> list[Server]:
    servers = []
    for first in range(0, len(peer_ports), per_server):
        server = Server(ServerConfig(listen=[("127.0.0.1", 0)], multi_session=True))
        for slot in range(first, min(first + per_server, len(peer_ports))):
            spec = f"tcp:127.0.0.1:{peer_ports[slot]},reconnect={reconnect}"
            server.add_port(port_name(slot), parse_backend(spec)())
        servers.append(server)
    return servers


async def main(a: argparse.Namespace) -> None:
    raise_nofile_limit()
    peer_ports = [int(p) for p in a.peer_ports.split(",")]
    servers = build(peer_ports, a.per_server, a.reconnect)
    commands = stdin_lines()
    pressure = Pressure(servers)
    async with AsyncExitStack() as stack:
        ports = []
        for server in servers:
            addresses = await stack.enter_async_context(server)
            ports.append(addresses[0][1])  # type: ignore[index]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pressure.run)
            reply("LISTENING " + json.dumps(ports))
            while (line := await commands.readline()) is not None:
                words = line.split()
                if words == ["report"]:
                    reply(json.dumps({**idle_report(servers), **pressure.snapshot()}))
                elif words == ["memory"]:
                    reply(json.dumps(memory(servers)))
                elif words == ["trim"]:
                    reply(json.dumps(trim()))
                elif len(words) == 2 and words[0] == "wait-idle":
                    report = await wait_idle(servers, float(words[1]))
                    reply(json.dumps({**report, **pressure.snapshot()}))
                elif words:
                    raise ValueError(f"unknown command {line!r}")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-ports", required=True, help="comma-separated, one per slot")
    p.add_argument("--per-server", type=int, default=250)
    p.add_argument("--reconnect", type=float, default=1.0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        trio.run(main, p.parse_args())
    except KeyboardInterrupt:
        pass
