"""`trivmc serve`'s command line: its options and the examples its help ends with.

The option values are checked by the types in `serve_options.py`; a settings file
(`--config`) fills what the command line leaves out (`merge_config`).
"""

from __future__ import annotations

import argparse
from typing import Any

from .serve_options import parse_size, positive_float, positive_int

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
        "--await-handover",
        metavar="PATH",
        help="take over from a running trivmc serve instead of listening: wait at the"
        " unix socket PATH for its `trivmc ctl ... handover --to PATH`, then serve its"
        " listeners, sessions and backend peers (docs/handover.md); give the same"
        " channels as the running server",
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
