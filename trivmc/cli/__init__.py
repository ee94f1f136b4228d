"""The `trivmc` command: `trivmc serve ...`, `trivmc connect ...`, `trivmc replay ...`.

Each subcommand lives in its own module and registers itself with `add_parser(sub)`;
`main()` dispatches to the chosen subcommand's `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("serve", "connect", "ctl", "status", "replay")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand attached."""
    parser = argparse.ArgumentParser(
        prog="trivmc",
        description="SPICE usbredir/port/webdav channels on trio: a server and a client.",
    )
    parser.add_argument("--version", action="version", version=f"trivmc {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"trivmc.cli.{name}")
        module.add_parser(sub)
    return parser


def version() -> str:
    """The installed trivmc's version."""
    try:
        return importlib.metadata.version("trivmc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trivmc` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"trivmc.cli.{args.command}")
    code: int = module.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
