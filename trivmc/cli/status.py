"""`trivmc status`: channels, their clients and live byte rates, from a server's
control socket; `--watch` refreshes the table in place."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from ..control.client import ControlClient, control_client
from .ctl import run_control

CLEAR = "\x1b[H\x1b[2J"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="show a server's channels, clients and byte rates")
    p.add_argument("target", help="the control socket: PATH, unix:PATH or tcp:HOST:PORT")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="rate window (default 1)"
    )


def rate(now: int, before: int, seconds: float) -> str:
    """Bytes per second, human-sized."""
    per_second = max(0, now - before) / seconds if seconds > 0 else 0.0
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if per_second < 1024:
            return f"{per_second:.0f} {unit}"
        per_second /= 1024
    return f"{per_second:.1f} GiB/s"


def moved(c: dict[str, int]) -> tuple[int, int]:
    """Payload bytes in and out, whether they went as DATA or COMPRESSED_DATA."""
    return c["in-data"] + c["in-decompressed"], c["out-data"] + c["out-uncompressed"]


def render(
    spice: dict[str, Any],
    channels: list[dict[str, Any]],
    before: dict[str, dict[str, int]],
    seconds: float,
) -> str:
    """The status screen: one header line, then a row per channel."""
    sessions = {c["connection-id"] for c in spice.get("channels", [])}
    where = f"{spice.get('host', '')}:{spice.get('port', spice.get('tls-port', ''))}"
    lines = [
        f"trivmc {where}  auth {spice.get('auth')}  sessions {len(sessions)}"
        f"  linked channels {len(spice.get('channels', []))}",
        "",
        f"{'channel':<34} {'client':<28} {'in':>12} {'out':>12} {'in/s':>11} {'out/s':>11}"
        f" {'queued':>9} {'dropped':>9}",
    ]
    for ch in channels:
        c = ch["counters"]
        old = before.get(ch["label"], c)
        client = ch["client"]["peer"].split(" ")[0] if ch.get("client") else "-"
        if not ch.get("available", True):
            client = "(withdrawn)"
        (now_in, now_out), (old_in, old_out) = moved(c), moved(old)
        lines.append(
            f"{ch['label'][:34]:<34} {client[:28]:<28} {now_in:>12} {now_out:>12}"
            f" {rate(now_in, old_in, seconds):>11} {rate(now_out, old_out, seconds):>11}"
            f" {c['buffered-bytes'] + c['queued-to-client']:>9} {c['dropped-at-boundary']:>9}"
        )
    return "\n".join(lines)


async def sample(client: ControlClient) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    spice = await client.execute("query-spice")
    channels = await client.execute("query-channels")
    return spice, channels, trio.current_time()


async def main(target: str, watch: bool, interval: float) -> int:
    async with control_client(target) as client:
        _, channels, then = await sample(client)
        while True:
            before = {ch["label"]: ch["counters"] for ch in channels}
            await trio.sleep(interval)  # the rate window
            spice, channels, now = await sample(client)
            screen = render(spice, channels, before, now - then)
            then = now
            if not watch:
                print(screen, flush=True)
                return 0
            sys.stdout.write(CLEAR + screen + "\n")
            sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    return run_control("trivmc status", args.target, main, args.watch, args.interval)
