"""`trivmc replay`: show a channel recording, or play its client -> device side into a
backend; and the `trivmc serve --record CHANNEL=FILE` wiring.

A recording is the file `trivmc serve --record` writes (docs/chardev.md, "Record and
replay"). Exit status: 0 done, 2 for a bad or truncated file or a bad backend (one
line on stderr, nothing delivered), 1 when the backend stops taking data.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Any

import trio

from ..backends import BackendSpecError, parse_backend
from ..chardev.record import (
    Recorder,
    RecordFormatError,
    ReplayStalled,
    iter_records,
    read_header,
    replay_records,
    summary,
)
from ..server import Server

log = logging.getLogger("trivmc.replay")

EXAMPLES = """\
examples:
  trivmc serve --record org.trivmc.echo.0=echo.rec
      record the demo port's traffic, both directions, with timestamps
  trivmc replay --show echo.rec
      every record: time, direction, size, first bytes (hex and text); then totals
  trivmc replay echo.rec --to tcp:127.0.0.1:4444
      play what the client sent into a fresh connection, at the recorded pace
  trivmc replay echo.rec --to file:/tmp/sent.bin --timing fast
      the client's bytes, as fast as the backend takes them, appended to a file

OPENED in the recording attaches a client (a connecting backend opens its peer),
CLOSED detaches it; the device's answers are read and discarded.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="show a channel recording, or replay it into a backend",
        description="Show a recording made by `trivmc serve --record`, or play its"
        " client -> device side into a backend.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="the recording")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--show", action="store_true", help="print a readable summary")
    what.add_argument("--to", metavar="BACKEND", help="the backend (as serve's --port takes)")
    p.add_argument(
        "--timing",
        choices=["original", "fast"],
        default="original",
        help="original: each record at its recorded time (default); fast: no waiting",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when the backend takes nothing for this long (default 10)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")


def check_file(path: str) -> tuple[int, str, int]:
    """Read the whole recording once: (version, label, record count); raises
    RecordFormatError or OSError."""
    with open(path, "rb") as f:
        info = read_header(f)
        count = sum(1 for _ in iter_records(f, info.version))
    return info.version, info.label, count


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_file(args.file)
    except (OSError, RecordFormatError) as e:
        print(f"trivmc replay: {args.file}: {e}", file=sys.stderr)
        return 2
    if args.show:
        with open(args.file, "rb") as f:
            info = read_header(f)
            for line in summary(info, iter_records(f, info.version)):
                print(line)
        return 0
    try:
        backend = parse_backend(args.to)()
    except (BackendSpecError, OSError) as e:
        print(f"trivmc replay: --to {args.to}: {e}", file=sys.stderr)
        return 2
    try:
        with open(args.file, "rb") as f:
            info = read_header(f)
            play = functools.partial(
                replay_records,
                iter_records(f, info.version),
                backend,
                timing=args.timing == "original",
                stall_timeout=args.stall_timeout,
            )
            result = trio.run(play)
    except RecordFormatError as e:  # (the file changed since it was checked)
        print(f"trivmc replay: {args.file}: {e}", file=sys.stderr)
        return 2
    except ReplayStalled as e:
        print(f"trivmc replay: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trivmc replay: stopped", file=sys.stderr)
        return 1
    print(
        f"trivmc replay: {result.delivered} bytes and {result.events} events to {args.to}"
        f" ({result.received} bytes came back)"
    )
    return 0


# ---- serve --record ------------------------------------------------------------------


def start_recordings(server: Server, specs: list[str]) -> None:
    """Record each `CHANNEL=FILE` of `specs` (`trivmc serve --record`): the file is
    created (truncated), unbuffered, so every record is on disk once it happened.
    ValueError (one line) for a bad spec, a channel not hosted or twice, a file that
    cannot be created; the files opened so far are closed then."""
    seen: dict[str, str] = {}
    try:
        for spec in specs:
            name, sep, path = str(spec).partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--record: expected CHANNEL=FILE, got {spec!r}")
            try:
                channel = server.find_channel(name)
            except LookupError as e:
                raise ValueError(f"--record: {e.args[0]}") from None
            real = os.path.realpath(path)
            if channel.label in seen or real in seen.values():
                raise ValueError(f"--record: {spec!r}: channel or file recorded twice")
            seen[channel.label] = real
            try:
                file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close_recordings
            except OSError as e:
                raise ValueError(f"--record: cannot create {path}: {e.strerror or e}") from e
            channel.chardev.recorder = Recorder(file, channel.label)
            log.info("%s: recording to %s", channel.label, path)
    except BaseException:
        close_recordings(server)
        raise


def close_recordings(server: Server) -> None:
    """Stop every recording of the server's channels and close its file."""
    for channel in server.channels.values():
        recorder = channel.chardev.recorder
        if recorder is not None:
            channel.chardev.recorder = None
            recorder.close()
