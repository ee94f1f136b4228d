"""`trivmc serve`: a SPICE server for usbredir, port and webdav channels.

This module runs it (`run`: settings, then serving until a signal); its command line
is in `serve_parser.py`, the option values in `serve_options.py`, the Server they
describe in `serve_setup.py`, and what it prints in `serve_report.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import signal
import sys
import tomllib

import trio

from .._groups import leaf_exceptions
from ..backends import BackendSpecError
from ..control import ControlAddress, ControlServer, parse_control_address
from ..control.listener import inherited_control_address
from ..server import Server
from ..server.adoption import await_handover as await_handover_at
from ..server.sockets import format_address
from ..server.systemd import ActivatedSockets, Notifier, SystemdError, listen_fds, sort_sockets
from . import version
from .replay import close_recordings
from .serve_options import merge_config, parse_hostport
from .serve_parser import add_parser
from .serve_report import print_stats, stats_lines, status_line, uri_for
from .serve_setup import build_server

__all__ = [  # (add_parser and run: the cli's subcommand interface; the rest: tests)
    "Started",
    "add_parser",
    "build_server",
    "merge_config",
    "run",
    "serve",
    "stats_lines",
    "stop_on_signals",
]

log = logging.getLogger("trivmc.serve")


async def serve(
    server: Server,
    stats: float | None = None,
    started: Started | None = None,
    control: ControlAddress | None = None,
    *,
    activated: ActivatedSockets | None = None,
    notifier: Notifier | None = None,
    metrics: tuple[str, int] | None = None,
    await_handover: str | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, or until a handover moved everything to another
    server; `activated`: the sockets systemd passed (their control socket is served at
    `control`); `notifier` gets READY=1 once every listener serves and STOPPING=1 when
    a signal stops it; `metrics`: where to serve Prometheus metrics; `await_handover`:
    take the listeners, sessions and peers of a running server that hands over at
    this unix socket path, instead of listening (docs/handover.md)."""
    try:
        await _serve(
            server,
            stats,
            started or Started(),
            control,
            activated or ActivatedSockets(),
            notifier or Notifier(None),
            metrics,
            await_handover,
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
    await_handover: str | None,
) -> None:
    async with trio.open_nursery() as nursery:
        bound = None
        if control is not None:  # first: an address it cannot use is a setting's error
            ctl = ControlServer(server, control, version=version(), listener=activated.control)
            bound = await nursery.start(ctl.serve)
        metrics_at = []
        if metrics is not None:  # prometheus_client only when metrics are asked for
            from ..server.metrics import serve_metrics

            metrics_at = await nursery.start(serve_metrics, server, *metrics)
        inherited = activated.listeners
        receiver = None
        if await_handover is not None:
            print(f"trivmc: awaiting a handover at {await_handover}", flush=True)
            inherited, receiver = await await_handover_at(await_handover, server)
            server.config = dataclasses.replace(server.config, listen=[], tls_listen=[], unix=[])
        addresses: list[object] = await nursery.start(
            functools.partial(server.serve, inherited=inherited)
        )
        if receiver is not None:
            nursery.start_soon(receiver.run)
        nursery.start_soon(_stop_when_handed_over, server, nursery.cancel_scope)
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


async def _stop_when_handed_over(server: Server, scope: trio.CancelScope) -> None:
    """A handover moved everything to the next server: this one is done."""
    await server.done.wait()
    print("trivmc: handed over to the next server", flush=True)
    scope.cancel()


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
                await_handover=getattr(args, "await_handover", None),
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
