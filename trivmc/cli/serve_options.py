"""`trivmc serve`'s option values and settings file: addresses, sizes, the TOML
config merged under the command line, the password file, the limit options."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any


def parse_hostport(text: str) -> tuple[str, int]:
    """HOST:PORT ([V6]:PORT for IPv6; an empty host is 127.0.0.1), port 0..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if int(port) > 65535:
        raise ValueError(f"port {port} out of range (0-65535) in {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count: 4194304, 4096K, 4M or 4MiB."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in SIZE_UNITS and not t[-1:].isdigit() else ""
    try:
        value = int(float(t[: len(t) - len(unit)]) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


CONFIG_KEYS = {
    "listen", "unix", "password", "disable_ticketing", "multi_session",
    "usbredir", "port", "webdav", "log_level", "stats", "tls_listen", "cert", "key",
    "ca", "secure_channels", "plaintext_channels", "no_websocket", "ping_interval",
    "ping_misses", "keepalive", "max_pending_links", "max_pending_per_source", "byte_budget",
    "name", "uuid", "record", "metrics", "password_file", "control",
}  # fmt: skip


def load_config(path: str) -> dict[str, Any]:
    """Read a TOML settings file; names are the long options with underscores."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    for key in ("listen", "unix", "usbredir", "tls_listen"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    for key in ("port", "record"):
        if isinstance(data.get(key), dict):
            data[key] = [f"{k}={v}" for k, v in data[key].items()]
    if isinstance(data.get("record"), str):
        data["record"] = [data["record"]]
    return data


def merge_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options not given on the command line from --config, then defaults."""
    conf = load_config(args.config) if args.config else {}
    if args.password is None and not args.disable_ticketing and args.password_file is None:
        args.password = conf.get("password")
        args.password_file = conf.get("password_file")
        args.disable_ticketing = bool(conf.get("disable_ticketing", False))
    if args.password_file is not None:
        args.password = read_password_file(args.password_file)
    for key, default in (
        ("listen", []),
        ("unix", []),
        ("usbredir", []),
        ("port", []),
        ("webdav", None),
        ("multi_session", False),
        ("log_level", "INFO"),
        ("stats", None),
        ("tls_listen", []),
        ("cert", None),
        ("key", None),
        ("ca", None),
        ("secure_channels", None),
        ("plaintext_channels", None),
        ("no_websocket", False),
        ("ping_interval", None),
        ("ping_misses", None),
        ("keepalive", None),
        ("max_pending_links", None),
        ("max_pending_per_source", None),
        ("byte_budget", None),
        ("control", None),
        ("name", None),
        ("uuid", None),
        ("record", []),
        ("metrics", None),
    ):
        if getattr(args, key) is None:
            setattr(args, key, conf.get(key, default))
    if isinstance(args.byte_budget, str):
        args.byte_budget = parse_size(args.byte_budget)
    return args


def read_password_file(path: str) -> str:
    """The ticket in `path`: its first line, without the line end."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the password file {path}: {e}") from e
    password = line.rstrip("\r\n")
    if not password:
        raise ValueError(f"the password file {path} is empty")
    return password


def limits(args: argparse.Namespace) -> dict[str, Any]:
    """The ServerConfig fields the limit options set (only those given)."""
    out: dict[str, Any] = {}
    for option, field_name in (
        ("ping_interval", "ping_interval"),
        ("ping_misses", "ping_misses"),
        ("max_pending_links", "max_pending_links"),
        ("max_pending_per_source", "max_pending_per_source"),
        ("byte_budget", "vmc_byte_budget"),
    ):
        if getattr(args, option) is not None:
            out[field_name] = getattr(args, option)
    if args.keepalive is not None:
        out["tcp_keepalive"] = args.keepalive or None
    return out
