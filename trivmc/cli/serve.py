"""`trivmc serve`: a SPICE server for usbredir, port and webdav channels."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import ssl
import sys
import tomllib
import uuid
from typing import Any

import trio

from .._groups import leaf_exceptions
from ..backends import BackendSpecError, parse_backend
from ..control import ControlAddress, ControlServer, parse_control_address
from ..control.listener import inherited_control_address
from ..server import Server, ServerConfig
from ..server.config import DEFAULT_PORT, parse_channel_names
from ..server.metrics import serve_metrics
from ..server.sockets import format_address
from ..server.systemd import ActivatedSockets, Notifier, SystemdError, listen_fds, sort_sockets
from ..transport import server_tls_context
from . import version
from .replay import close_recordings, start_recordings
from .serve_options import (
    limits,
    merge_config,
    parse_hostport,
    parse_size,
    positive_float,
    positive_int,
)

log = logging.getLogger("trivmc.serve")

DEMO_PORT = "org.trivmc.echo.0=echo"

EXAMPLES = """\
BACKEND (QEMU's -chardev vocabulary):
  echo | null | source:BYTES
  tcp:HOST:PORT[,reconnect=SECONDS]   connect while a client is attached (bounded backoff)
  tcp-listen:HOST:PORT                accept one peer at a time
  unix:PATH[,reconnect=SECONDS] | unix-listen:PATH
  file:PATH                           append what the client sends
  exec:COMMAND                        a child process per client (stdin/stdout)

examples:
  trivmc serve
      the built-in demo: 127.0.0.1:5930, no ticket, port org.trivmc.echo.0 echoing
  trivmc serve --disable-ticketing --usbredir tcp:127.0.0.1:4000
      USB redirection gateway: SPICE usbredir channel -> QEMU
      `-chardev socket,id=ur0,host=127.0.0.1,port=4000,server=on,wait=off
       -device usb-redir,chardev=ur0` (then: remote-viewer spice://127.0.0.1:5930)
  trivmc serve --password s3cret --port org.qemu.monitor.qmp.0=unix:/run/qemu-qmp.sock
      QMP of a QEMU (`-qmp unix:/run/qemu-qmp.sock,server=on,wait=off`) over a SPICE port
  trivmc serve --multi-session --port org.example.shell.0=exec:/bin/sh
      a shell per client on a port channel, several clients at once
  trivmc serve --webdav file:/tmp/webdav.log --port org.example.log.0=file:/tmp/port.log
  trivmc serve --name vm1 --uuid 8e9f0c3a-0b1d-4c2e-9f3a-1b2c3d4e5f60
      the guest's name and UUID, sent to clients (remote-viewer shows the name)
  trivmc serve --record org.trivmc.echo.0=echo.rec
      record both directions of a channel (a port name, usbredir:N or webdav), with
      timestamps; then `trivmc replay --show echo.rec`, `trivmc replay echo.rec --to ...`
  systemctl start trivmc.socket
      under systemd (examples/trivmc.socket, examples/trivmc.service): the sockets
      it passes replace --listen/--unix/--tls-listen (FileDescriptorName=tls for a
      TLS one, =control for the control socket), and READY=1 is sent once serving
  trivmc serve --config trivmc.toml --stats 10
      settings from TOML (the same names: listen, unix, password, disable_ticketing,
      multi_session, usbredir = [...], port = {NAME = BACKEND}, webdav, log_level, stats,
      name, uuid, record = {CHANNEL = FILE}, metrics); command-line options override it
  trivmc serve --metrics 127.0.0.1:9930
      Prometheus metrics at http://127.0.0.1:9930/metrics (docs/operating.md)
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve SPICE usbredir/port/webdav channels",
        description="Serve SPICE usbredir, port and webdav channels backed by chardev backends.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with the same settings")
    p.add_argument("--listen", action="append", metavar="HOST:PORT", default=None)
    p.add_argument("--unix", action="append", metavar="PATH", default=None)
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--password", metavar="PW", help="ticket clients must present")
    auth.add_argument("--disable-ticketing", action="store_true", help="accept any ticket")
    auth.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the ticket from FILE (its first line), not from the command line",
    )
    p.add_argument(
        "--control",
        metavar="ADDRESS",
        help="a QMP control socket: unix:PATH or tcp:127.0.0.1:PORT (loopback only);"
        " drive it with `trivmc ctl`, `trivmc status`, qmp-shell or socat",
    )
    p.add_argument(
        "--multi-session",
        action="store_true",
        default=None,
        help="keep older sessions when a new main channel links (default: replace them)",
    )
    p.add_argument("--usbredir", action="append", metavar="BACKEND", default=None)
    p.add_argument("--port", action="append", metavar="NAME=BACKEND", default=None)
    p.add_argument("--webdav", metavar="BACKEND")
    p.add_argument("--name", help="the guest's name, sent to clients (MAIN_NAME)")
    p.add_argument("--uuid", help="the guest's UUID, sent to clients (MAIN_UUID)")
    p.add_argument(
        "--record",
        action="append",
        metavar="CHANNEL=FILE",
        default=None,
        help="record a channel's traffic, both directions, to FILE (trivmc replay reads"
        " it); CHANNEL: a port name, usbredir:N or webdav",
    )
    tls = p.add_argument_group("TLS (secure channels)")
    tls.add_argument("--tls-listen", action="append", metavar="HOST:PORT", default=None)
    tls.add_argument("--cert", metavar="FILE", help="server certificate (PEM, with its chain)")
    tls.add_argument("--key", metavar="FILE", help="its private key (PEM; default: in --cert)")
    tls.add_argument("--ca", metavar="FILE", help="CA certificate(s) completing the chain")
    tls.add_argument(
        "--secure-channels",
        metavar="LIST",
        help="channels that must use TLS: main,usbredir,port,webdav or all",
    )
    tls.add_argument("--plaintext-channels", metavar="LIST", help="channels that must not use TLS")
    p.add_argument(
        "--no-websocket",
        action="store_true",
        default=None,
        help="do not answer WebSocket upgrades (spice-html5) on the SPICE ports",
    )
    lim = p.add_argument_group("limits and dead peers (docs/limits.md)")
    lim.add_argument(
        "--ping-interval",
        type=positive_float,
        metavar="SECONDS",
        help="PING clients this often; one that answers none of --ping-misses PINGs in a"
        " row is disconnected (default: no PINGs)",
    )
    lim.add_argument(
        "--ping-misses", type=positive_int, metavar="N", help="unanswered PINGs (default 3)"
    )
    lim.add_argument(
        "--keepalive",
        type=float,
        metavar="SECONDS",
        help="TCP keepalive idle time on client sockets (default 600, as spice-server; 0: off)",
    )
    lim.add_argument(
        "--max-pending-links",
        type=positive_int,
        metavar="N",
        help="connections still linking, in all (default 512; the oldest is dropped)",
    )
    lim.add_argument(
        "--max-pending-per-source",
        type=positive_int,
        metavar="N",
        help="connections still linking per client address (default 32; more are refused)",
    )
    lim.add_argument(
        "--byte-budget",
        type=parse_size,
        metavar="BYTES",
        help="client->device bytes held per VMC channel, e.g. 4M (default 4 MiB)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--stats", type=float, metavar="SECONDS", help="print per-channel counters this often"
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (docs/operating.md)",
    )


def build_server(args: argparse.Namespace, activated: ActivatedSockets | None = None) -> Server:
    """The Server the options describe (the demo when they name no channel/address).
    SPICE sockets passed by systemd (`activated`) replace the listen options: giving
    both is an error."""
    passed = activated or ActivatedSockets()
    if passed.listeners:
        given = [
            option
            for option, value in (
                ("--listen", args.listen),
                ("--unix", args.unix),
                ("--tls-listen", args.tls_listen),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"systemd passed SPICE sockets (LISTEN_FDS): they replace {', '.join(given)};"
                " give the addresses in the socket unit or here, not both"
            )
    listen = [parse_hostport(x) for x in args.listen]
    if not listen and not args.unix and not args.tls_listen and not passed.listeners:
        listen = [("127.0.0.1", DEFAULT_PORT)]
    ports = list(args.port)
    if not ports and not args.usbredir and not args.webdav:
        ports = [DEMO_PORT]
    tls_listen = [parse_hostport(x) for x in args.tls_listen]
    if tls_listen and not args.cert:
        raise ValueError("--tls-listen needs --cert (and --key unless the key is in it)")
    if passed.tls and not args.cert:
        raise ValueError("a socket named tls (systemd) needs --cert (and --key unless in it)")
    if args.cert and not tls_listen and not passed.tls:
        raise ValueError("--cert given without --tls-listen")
    try:
        tls = server_tls_context(args.cert, args.key, args.ca) if args.cert else None
    except (OSError, ssl.SSLError) as e:
        files = " and ".join(f for f in (args.cert, args.key) if f)
        raise ValueError(f"cannot load the TLS certificate/key from {files}: {e}") from e
    try:
        vm_uuid = None if args.uuid is None else uuid.UUID(str(args.uuid))
    except ValueError:
        raise ValueError(f"--uuid: not a UUID: {args.uuid!r}") from None
    secure = parse_channel_names(args.secure_channels or "")
    if secure and not tls_listen and not passed.tls:
        raise ValueError("--secure-channels needs a TLS listener (--tls-listen)")
    config = ServerConfig(
        listen=listen,
        unix=list(args.unix),
        password=None if args.disable_ticketing else args.password,
        multi_session=args.multi_session,
        tls_listen=tls_listen,
        tls=tls,
        secure_channels=secure,
        plaintext_channels=parse_channel_names(args.plaintext_channels or ""),
        websocket=not args.no_websocket,
        name=args.name,
        uuid=vm_uuid,
        **limits(args),
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
    start_recordings(server, args.record)
    return server


def uri_for(addr: object, tls_addr: object = None) -> str:
    """The spice:// URI a client (remote-viewer) uses for a bound address."""
    if isinstance(addr, str):
        return f"spice+unix://{addr}"
    if addr is None:
        assert isinstance(tls_addr, tuple)
        host = format_address(tls_addr).rpartition(":")[0]
        return f"spice://{host}?tls-port={tls_addr[1]}"
    if isinstance(tls_addr, tuple) and tls_addr[0] == addr[0]:  # type: ignore[index]
        host = format_address(addr).rpartition(":")[0]
        return f"spice://{host}?port={addr[1]}&tls-port={tls_addr[1]}"  # type: ignore[index]
    return f"spice://{format_address(addr)}"


def stats_lines(server: Server) -> list[str]:
    """One line of counters per channel."""
    lines = []
    for ch in server.channels.values():
        st = ch.device.stats
        lines.append(
            f"{ch.label}: clients {1 if ch.client else 0} (served {ch.clients_served},"
            f" refused {ch.clients_refused}) in: DATA {st.in_data} B, lz4 {st.in_compressed}"
            f" -> {st.in_decompressed} B; out: DATA {st.out_data} B, lz4"
            f" {st.out_uncompressed} -> {st.out_compressed} B; device written {st.written} B,"
            f" read {st.read} B; tokens free {ch.device.tokens_free}"
        )
    return lines


async def print_stats(server: Server, every: float) -> None:
    while True:
        await trio.sleep(every)
        for line in stats_lines(server):
            print(f"trivmc stats: {line}", flush=True)


async def serve(
    server: Server,
    stats: float | None = None,
    started: Started | None = None,
    control: ControlAddress | None = None,
    *,
    activated: ActivatedSockets | None = None,
    notifier: Notifier | None = None,
    metrics: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; `activated`: the sockets systemd passed (their
    control socket is served at `control`); `notifier` gets READY=1 once every listener
    serves and STOPPING=1 when a signal stops it; `metrics`: where to serve Prometheus
    metrics."""
    try:
        await _serve(
            server,
            stats,
            started or Started(),
            control,
            activated or ActivatedSockets(),
            notifier or Notifier(None),
            metrics,
        )
    finally:
        close_recordings(server)


async def _serve(
    server: Server,
    stats: float | None,
    started: Started,
    control: ControlAddress | None,
    activated: ActivatedSockets,
    notifier: Notifier,
    metrics: tuple[str, int] | None,
) -> None:
    async with trio.open_nursery() as nursery:
        bound = None
        if control is not None:  # first: an address it cannot use is a setting's error
            ctl = ControlServer(server, control, version=version(), listener=activated.control)
            bound = await nursery.start(ctl.serve)
        metrics_at = (
            [] if metrics is None else await nursery.start(serve_metrics, server, *metrics)
        )
        addresses: list[object] = await nursery.start(
            functools.partial(server.serve, inherited=activated.listeners)
        )
        if bound is not None:
            print(f"trivmc: control socket {bound}", flush=True)
        started.yes = True
        await nursery.start(stop_on_signals, nursery.cancel_scope, notifier, started)
        if server.password is None and any(
            isinstance(a, tuple) and a[0] not in ("127.0.0.1", "::1", "localhost")
            for a in [*addresses, *server.tls_addresses]
        ):
            log.warning("ticketing is disabled on a non-loopback address: anyone can connect")
        if metrics is not None and metrics[0] not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics on a non-loopback address: anyone who reaches it reads them")
        if stats:
            nursery.start_soon(print_stats, server, stats)
        for addr in addresses:
            print(f"trivmc: serving {uri_for(addr)}", flush=True)
        for addr in server.tls_addresses:
            print(f"trivmc: serving TLS {uri_for(None, addr)}", flush=True)
        for ch in server.channels.values():
            print(f"trivmc: channel {ch.label}", flush=True)
        for addr in metrics_at:
            print(f"trivmc: metrics on http://{format_address(addr)}/metrics", flush=True)
        tls_first = server.tls_addresses[0] if server.tls_addresses else None
        if addresses:
            print(f"try: remote-viewer {uri_for(addresses[0], tls_first)}", flush=True)
        elif tls_first is not None:
            print(f"try: remote-viewer {uri_for(None, tls_first)}", flush=True)
        notifier.notify("READY=1", f"STATUS={status_line(server)}")


def status_line(server: Server) -> str:
    """What systemd shows as the service's status once it serves."""
    where = [format_address(a) for a in server.addresses]
    where += [f"{format_address(a)} (TLS)" for a in server.tls_addresses]
    return f"serving {', '.join(where)}; {len(server.channels)} channels"


async def stop_on_signals(
    scope: trio.CancelScope,
    notifier: Notifier,
    started: Started,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """From its start on, the first SIGINT or SIGTERM sends STOPPING=1 and stops
    serving (cancels `scope`): listeners and the control socket close, recordings are
    completed. A second signal is not caught here (SIGINT: KeyboardInterrupt)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            log.info("stopping (%s)", name)
            started.stopped_by = name
            notifier.notify("STOPPING=1", f"STATUS=stopping ({name})")
            scope.cancel()
            return


def run(args: argparse.Namespace) -> int:
    """0 when stopped (Ctrl-C, SIGTERM), 2 for a setting or address that cannot work
    (one line on stderr, nothing served), 1 when a listener fails while serving.

    Under systemd the passed sockets (LISTEN_FDS) and NOTIFY_SOCKET are taken first and
    removed from the environment, so that no child (exec: backends) inherits them."""
    notifier = Notifier.from_environment()
    try:
        activated = sort_sockets(listen_fds())
    except SystemdError as e:
        print(f"trivmc serve: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, activated, notifier)
    finally:
        activated.close()  # those the server did not take (it closes its own)


def _run(args: argparse.Namespace, activated: ActivatedSockets, notifier: Notifier) -> int:
    try:
        args = merge_config(args)
    except (OSError, ValueError, argparse.ArgumentTypeError, tomllib.TOMLDecodeError) as e:
        print(f"trivmc serve: bad --config: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = build_server(args, activated)
        control = parse_control_address(args.control) if args.control else None
        metrics = parse_hostport(args.metrics) if args.metrics else None
        if activated.control is not None:
            if control is not None:
                raise ValueError(
                    "systemd passed a socket named control: it replaces --control;"
                    " give the control address in the socket unit or here, not both"
                )
            control = inherited_control_address(activated.control)
    except (ValueError, BackendSpecError) as e:
        print(f"trivmc serve: {e}", file=sys.stderr)
        return 2
    started = Started()
    try:
        trio.run(
            functools.partial(
                serve,
                server,
                args.stats,
                started,
                control,
                activated=activated,
                notifier=notifier,
                metrics=metrics,
            )
        )
    except BaseException as e:
        leaves = leaf_exceptions(e)
        if all(isinstance(x, KeyboardInterrupt) for x in leaves):
            print("trivmc: stopped", file=sys.stderr)
            return 0
        if all(isinstance(x, OSError) for x in leaves):
            print(f"trivmc serve: {'; '.join(map(str, leaves))}", file=sys.stderr)
            return 1 if started.yes else 2
        raise
    if started.stopped_by is not None:
        print("trivmc: stopped", file=sys.stderr)
    return 0


class Started:
    """`yes` once every listener is bound (an error before that is a setting's);
    `stopped_by`: the signal that stopped serving."""

    yes = False
    stopped_by: str | None = None
