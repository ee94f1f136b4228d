"""`trivmc connect`: bridge a SPICE VMC channel to stdin/stdout or a local listener."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("connect", help="open a SPICE port/usbredir/webdav channel")
    p.add_argument("uri")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("trivmc connect: not available yet")
