"""The Server that `trivmc serve`'s options describe (`build_server`)."""

from __future__ import annotations

import argparse
import ssl
import uuid

from ..backends import parse_backend
from ..server import Server, ServerConfig
from ..server.config import DEFAULT_PORT, parse_channel_names
from ..server.systemd import ActivatedSockets
from ..transport import server_tls_context
from .replay import start_recordings
from .serve_options import limits, parse_hostport

DEMO_PORT = "org.trivmc.echo.0=echo"


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
