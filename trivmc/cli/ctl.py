"""`trivmc ctl`: run one command on a server's control socket, for scripts.

    trivmc ctl /run/trivmc.sock query-spice
    trivmc ctl /run/trivmc.sock set_password protocol=spice password=s3cret
    trivmc ctl tcp:127.0.0.1:4444 add-channel type=port name=org.example.0 backend=echo
    trivmc ctl /run/trivmc.sock disconnect-session connection-id:=1234

KEY=VALUE passes a string, KEY:=JSON a JSON value (a number, true, a list...). The
result is printed as JSON; exit status 0, 1 when the server answered with an error
(printed on stderr), 2 when the socket cannot be reached or the arguments are bad.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..control.client import QmpError, control_client


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ctl",
        help="run a command on a server's control socket",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="the control socket: PATH, unix:PATH or tcp:HOST:PORT")
    p.add_argument(
        "qmp_command", metavar="command", help="e.g. query-spice, query-channels, set_password"
    )
    p.add_argument("args", nargs="*", metavar="KEY=VALUE|KEY:=JSON")
    p.add_argument(
        "--events", action="store_true", help="then print events as they come (until Ctrl-C)"
    )


def parse_args(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE (a string) and KEY:=JSON pairs as a QMP arguments object."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE or KEY:=JSON, got {item!r}")
        if key.endswith(":"):
            try:
                out[key[:-1]] = json.loads(value)
            except ValueError as e:
                raise ValueError(f"{item!r}: not JSON: {e}") from None
        else:
            out[key] = value
    return out


async def main(target: str, command: str, arguments: dict[str, Any], events: bool) -> int:
    async with control_client(target) as client:
        try:
            result = await client.execute(command, arguments)
        except QmpError as e:
            print(f"trivmc ctl: {e}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2), flush=True)
        while events:
            print(json.dumps(await client.next_event()), flush=True)
    return 0


def run_control(
    prog: str, target: str, main: Callable[..., Awaitable[int]], *main_args: Any
) -> int:
    """Run a control-socket client's `main` under trio: its status; 2 (one line on
    stderr) for a bad argument or a socket that cannot be used; 0 on Ctrl-C."""
    try:
        return trio.run(main, target, *main_args)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as e:
        print(f"{prog}: cannot use the control socket {target}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def run(args: argparse.Namespace) -> int:
    try:
        arguments = parse_args(args.args)
    except ValueError as e:
        print(f"trivmc ctl: {e}", file=sys.stderr)
        return 2
    return run_control("trivmc ctl", args.target, main, args.qmp_command, arguments, args.events)
