"""`trivmc connect`: bridge a SPICE VMC channel to stdin/stdout or a local listener."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Any

import trio
from trio_util import wait_any

from .._groups import leaf_exceptions
from ..client import ChannelNotFound, ChannelStream, Session, SpiceLinkError, connect
from .serve_options import parse_hostport

log = logging.getLogger("trivmc.connect")

EXAMPLES = """\
examples:
  trivmc connect spice://127.0.0.1:5930 --port org.qemu.monitor.qmp.0
      QMP of a QEMU started with -spice ... -chardev spiceport,name=org.qemu.monitor.qmp.0
  printf '{"execute":"qmp_capabilities"}\\n' | trivmc connect spice://127.0.0.1:5930 \\
      --port org.qemu.monitor.qmp.0
  trivmc connect spice://127.0.0.1:5930 --port org.qemu.console.serial.0 --listen 127.0.0.1:4444
  SPICE_PASSWORD=s3cret trivmc connect spice://vmhost:5900 --usbredir 0 --listen 127.0.0.1:4000
  trivmc connect 'spice://vmhost?port=5900&tls-port=5901' --ca-file ca-cert.pem --port NAME
      channels the server wants secure are linked on the TLS port (certificate verified)
"""

COPY_SIZE = 256 * 1024


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "connect",
        help="open a SPICE port/usbredir/webdav channel as a byte stream",
        description="Link a SPICE server's VMC channel and bridge it to stdin/stdout "
        "(binary safe) or to a local TCP listener.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "uri",
        help="spice://HOST:PORT, spice://HOST?port=P&tls-port=T, spice+tls://HOST:T, "
        "ws://HOST:PORT or spice+unix:///PATH",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--port", metavar="NAME", help="a port channel, by name")
    which.add_argument("--usbredir", type=int, metavar="ID", help="usbredir channel ID")
    which.add_argument("--webdav", action="store_true", help="the webdav channel")
    p.add_argument("--listen", metavar="HOST:PORT", help="serve the channel on a local listener")
    p.add_argument("--password", help="ticket (default: $SPICE_PASSWORD)")
    p.add_argument(
        "--tls-port",
        type=int,
        metavar="PORT",
        help="the server's TLS port: channels that need TLS are linked there",
    )
    p.add_argument(
        "--ca-file",
        metavar="FILE",
        help="CA certificate(s) that verify the server (default: the system's store)",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=1.0,
        help="after stdin ends, exit once the channel was quiet this long (default 1 s)",
    )
    p.add_argument("--no-lz4", action="store_true", help="do not negotiate LZ4")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


async def open_selected(session: Session, args: argparse.Namespace) -> ChannelStream:
    if args.port is not None:
        return await session.open_port(args.port)
    if args.usbredir is not None:
        return await session.open_usbredir(args.usbredir)
    return await session.open_webdav()


async def pump(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> None:
    """Copy until `src` ends."""
    while data := await src.receive_some(COPY_SIZE):
        await dst.send_all(data)


async def bridge_stdio(channel: ChannelStream, linger: float) -> None:
    """Copy stdin to the channel and the channel to stdout. After stdin ends, exit once
    the channel has been quiet for `linger` seconds (or when the server closes it)."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    last_data = trio.current_time()
    async with stdin, stdout:

        async def upstream_then_linger() -> None:
            nonlocal last_data
            await pump(stdin, channel)
            await channel.send_eof()
            last_data = max(last_data, trio.current_time())
            while (left := last_data + linger - trio.current_time()) > 0:
                await trio.sleep(left)

        async def downstream() -> None:
            nonlocal last_data
            while data := await channel.receive_some(COPY_SIZE):
                last_data = trio.current_time()
                await stdout.send_all(data)

        await wait_any(upstream_then_linger, downstream)


async def serve_listener(session: Session, args: argparse.Namespace) -> None:
    host, port = parse_hostport(args.listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    addr = listeners[0].socket.getsockname()
    print(f"trivmc connect: listening on {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
    lst = listeners[0]
    async with lst:
        while True:  # one connection at a time
            conn = await lst.accept()
            async with conn:
                channel = await open_selected(session, args)
                async with channel:
                    await bridge_pair(conn, channel)


async def bridge_pair(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    """Copy both ways until either side ends."""
    await wait_any(functools.partial(pump, a, b), functools.partial(pump, b, a))


async def main_async(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else os.environ.get("SPICE_PASSWORD")
    async with connect(
        args.uri,
        password,
        lz4=not args.no_lz4,
        tls_port=args.tls_port,
        ca_file=args.ca_file,
    ) as session:
        if args.listen:
            await serve_listener(session, args)
            return 0
        channel = await open_selected(session, args)
        async with channel:
            await bridge_stdio(channel, args.linger)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr)
    try:
        return trio.run(main_async, args)
    except BaseException as e:
        leaves = leaf_exceptions(e)
        if all(isinstance(x, KeyboardInterrupt) for x in leaves):
            return 130
        for code, kinds in (
            (3, (SpiceLinkError,)),
            (1, (ChannelNotFound, ValueError, OSError, trio.BrokenResourceError)),
        ):
            if all(isinstance(x, kinds) for x in leaves):
                why = "; ".join(str(x.__cause__ or x) for x in leaves)
                print(f"trivmc connect: {why}", file=sys.stderr)
                return code
        raise
