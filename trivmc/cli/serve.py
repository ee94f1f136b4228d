"""`trivmc serve`: a SPICE server for usbredir, port and webdav channels."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import trio

from ..backends import BackendSpecError, parse_backend
from ..server import Server, ServerConfig
from ..server.config import DEFAULT_PORT
from ..server.server import format_address

log = logging.getLogger("trivmc.serve")

DEMO_PORT = "org.trivmc.echo.0=echo"

EXAMPLES = """\
BACKEND: echo | null | source:BYTES

examples:
  trivmc serve
      the built-in demo: 127.0.0.1:5930, no ticket, port org.trivmc.echo.0 echoing
  trivmc serve --listen 127.0.0.1:5930 --password s3cret --port org.example.0=echo
  trivmc serve --disable-ticketing --usbredir null --usbredir null
  trivmc serve --unix /run/trivmc.sock --multi-session --port org.trivmc.data.0=source:1048576
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve SPICE usbredir/port/webdav channels",
        description="Serve SPICE usbredir, port and webdav channels backed by chardev backends.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", action="append", metavar="HOST:PORT", default=[])
    p.add_argument("--unix", action="append", metavar="PATH", default=[])
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--password", metavar="PW", help="ticket clients must present")
    auth.add_argument("--disable-ticketing", action="store_true", help="accept any ticket")
    p.add_argument(
        "--multi-session",
        action="store_true",
        help="keep older sessions when a new main channel links (default: replace them)",
    )
    p.add_argument("--usbredir", action="append", metavar="BACKEND", default=[])
    p.add_argument("--port", action="append", metavar="NAME=BACKEND", default=[])
    p.add_argument("--webdav", metavar="BACKEND")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def build_server(args: argparse.Namespace) -> Server:
    """The Server the options describe (the demo when they name no channel/address)."""
    listen = [parse_hostport(x) for x in args.listen]
    if not listen and not args.unix:
        listen = [("127.0.0.1", DEFAULT_PORT)]
    ports = list(args.port)
    if not ports and not args.usbredir and not args.webdav:
        ports = [DEMO_PORT]
    config = ServerConfig(
        listen=listen,
        unix=list(args.unix),
        password=None if args.disable_ticketing else args.password,
        multi_session=args.multi_session,
    )
    server = Server(config)
    for spec in args.usbredir:
        server.add_usbredir(parse_backend(spec)())
    for item in ports:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=BACKEND, got {item!r}")
        server.add_port(name, parse_backend(spec)())
    if args.webdav:
        server.add_webdav(parse_backend(args.webdav)())
    return server


def uri_for(addr: object) -> str:
    if isinstance(addr, str):
        return f"spice+unix://{addr}"
    return f"spice://{format_address(addr)}"


async def serve(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        addresses: list[object] = await nursery.start(server.serve)
        for addr in addresses:
            print(f"trivmc: serving {uri_for(addr)}", flush=True)
        for ch in server.channels.values():
            print(f"trivmc: channel {ch.label}", flush=True)
        if addresses:
            print(f"try: remote-viewer {uri_for(addresses[0])}", flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = build_server(args)
    except (ValueError, BackendSpecError) as e:
        print(f"trivmc serve: {e}", file=sys.stderr)
        return 2
    if server.password is None and any(
        h not in ("127.0.0.1", "::1", "localhost") for h, _ in server.config.listen
    ):
        log.warning("ticketing is disabled on a non-loopback address: anyone can connect")
    try:
        trio.run(serve, server)
    except KeyboardInterrupt:
        print("trivmc: stopped", file=sys.stderr)
    except OSError as e:
        print(f"trivmc serve: {e}", file=sys.stderr)
        return 1
    return 0
