"""The benchmark rows: what each measures, how each server is started for it, and the
target ratio the issue sets (trivmc / spice-server, same run)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

from .procs import HERE, PORT_NAME, RAW_CLIENT, py


@dataclass(frozen=True)
class Sizes:
    """How big a run is: the default (~5 min) or `--quick` (~1 min)."""

    total: int = 1 << 30
    total_small: int = 32 << 20  # 64-byte messages
    echo_small: int = 2000
    echo_large: int = 500
    links: int = 20
    sessions: int = 1000
    session_bytes: int = 64 << 10
    gtk_bytes: int = 8 << 20
    links_in_a_row: int = 200  # the sustained link rows (the same with --quick)


QUICK = Sizes(32 << 20, 8 << 20, 300, 100, 10, 1000, 16 << 10, 2 << 20)


@dataclass(frozen=True)
class Row:
    """One throughput/latency row: the same client against the three servers."""

    key: str
    label: str
    device: str  # sink | echo | source: the device each server runs
    spice: list[str]  # raw_client.py arguments ({N} = the run's byte count)
    pump: list[str]  # pump.py client arguments
    metric: str
    unit: str
    higher: bool
    target: float | None = None
    also: list[str] = field(default_factory=list)  # more metrics shown in the cell
    small: bool = False  # uses Sizes.total_small
    lean: bool = False  # SPICE side driven by link_client.py (trivmc.protocol), not raw_client
    password: str | None = None  # both SPICE servers ask for this ticket (None: no ticketing)

    @property
    def throughput(self) -> bool:
        """A row that moves `nbytes` through the device (sink or source): its server CPU
        is read per GB."""
        return self.device in ("sink", "source")

    def nbytes(self, sizes: Sizes) -> int:
        return sizes.total_small if self.small else sizes.total

    def fill(self, args: list[str], sizes: Sizes) -> list[str]:
        subs = {
            "{N}": str(self.nbytes(sizes)),
            "{ECHO_SMALL}": str(sizes.echo_small),
            "{ECHO_LARGE}": str(sizes.echo_large),
            "{LINKS}": str(sizes.links),
            "{IN_A_ROW}": str(sizes.links_in_a_row),
        }
        return [subs.get(a, a) for a in args]


def _send(
    key: str, label: str, size: int, target: float | None, *extra: str, small: bool = False
) -> Row:
    msg = ["--msg-size", str(size), "--total", "{N}"]
    return Row(
        key,
        label,
        "sink",
        ["send", *msg, *extra],
        ["send", *msg],
        "msgs_per_s",
        "msg/s",
        True,
        target,
        ["MBps"],
        small,
    )


def _echo(key: str, label: str, size: int, count: str, target: float | None) -> Row:
    args = ["echo", "--msg-size", str(size), "--count", count]
    return Row(key, label, "echo", args, args, "median_us", "µs", False, target, ["p99_us"])


_links = ["link", "--count", "{LINKS}"]
LINK = Row(
    "link", "connect + main + port link, per session", "echo", _links, _links, "median_ms",
    "ms", False, 0.2,
)  # fmt: skip

BENCH_PASSWORD = "bench-ticket"
_in_a_row = ["link", "--count", "{IN_A_ROW}"]
LINKS_IN_A_ROW = Row(
    "links200", "200 links in a row (main + port), no password", "echo", _in_a_row, _in_a_row,
    "median_ms", "ms", False, 0.2,
)  # fmt: skip
LINKS_IN_A_ROW_PW = replace(
    LINKS_IN_A_ROW,
    key="links200_pw",
    label="200 links in a row (main + port), password",
    spice=[*_in_a_row, "--password", BENCH_PASSWORD],
    target=None,
    password=BENCH_PASSWORD,
)
_LAST50 = ["last50_median_ms", "last50_per_s"]  # only link_client.py reports these

ROWS = [
    _send("send_64k", "client→device, 64 KiB messages", 65536, 1.0),
    _send("send_4k", "client→device, 4 KiB messages", 4096, 0.7),
    _send("send_64b", "client→device, 64 B messages", 64, 0.3, small=True),
    _send(
        "lz4_text_64k",
        "client→device, LZ4, text, 64 KiB",
        65536,
        1.0,
        "--pattern",
        "text",
        "--lz4",
    ),
    _send(
        "lz4_random_64k",
        "client→device, LZ4 offered, random, 64 KiB",
        65536,
        None,
        "--pattern",
        "random",
        "--lz4",
    ),
    Row(
        "recv",
        "device→client, source:N",
        "source",
        ["recv", "--total", "{N}", "--pattern", "counter"],
        ["recv", "--total", "{N}"],
        "MBps",
        "MB/s",
        True,
        1.0,
    ),
    Row(
        "recv_lz4",
        "device→client, source:N, LZ4",
        "source",
        ["recv", "--total", "{N}", "--pattern", "counter", "--lz4"],
        ["recv", "--total", "{N}"],
        "MBps",
        "MB/s",
        True,
    ),
    _echo("echo_64b", "echo round trip, 64 B", 64, "{ECHO_SMALL}", 1.2),
    _echo("echo_64k", "echo round trip, 64 KiB", 65536, "{ECHO_LARGE}", None),
    LINK,
    replace(LINK, key="link_lean", label="the same, trivmc's lean link client", lean=True),
    LINKS_IN_A_ROW,
    LINKS_IN_A_ROW_PW,
    replace(
        LINKS_IN_A_ROW,
        key="links200_lean",
        label="200 links in a row, no password, lean link client",
        also=_LAST50,
        lean=True,
    ),
    replace(
        LINKS_IN_A_ROW_PW,
        key="links200_pw_lean",
        label="200 links in a row, password, lean link client",
        also=_LAST50,
        lean=True,
    ),
]


def anchor_cmd(
    binary: str, port: int, device: str, nbytes: int, password: str | None = None
) -> list[str]:
    cmd = [binary, "-p", str(port), "-n", PORT_NAME, "-m", device, "-N", str(nbytes)]
    return cmd if password is None else [*cmd, "-t", password]


def trivmc_cmd(port: int, device: str, nbytes: int, password: str | None = None) -> list[str]:
    """trivmc as a user runs it: `trivmc serve` (the sink is a library-use script)."""
    if device == "sink":
        assert password is None, "the sink server has no ticket"
        return py(HERE / "sink_server.py", f"127.0.0.1:{port}", PORT_NAME, str(nbytes))
    backend = {"echo": "echo", "source": f"source:{nbytes}"}[device]
    ticket = ["--disable-ticketing"] if password is None else ["--password", password]
    return [
        sys.executable,
        "-m",
        "trivmc",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        *ticket,
        "--log-level",
        "WARNING",
        "--port",
        f"{PORT_NAME}={backend}",
    ]


def pump_cmd(port: int, device: str, nbytes: int, many: bool = False) -> list[str]:
    cmd = py(HERE / "pump.py", "serve", device, "--port", str(port), "--total", str(nbytes))
    return [*cmd, "--many"] if many else cmd


def spice_client(args: list[str], port: int, lean: bool = False) -> list[str]:
    if lean:  # only the link row: link_client.py takes --count
        return py(HERE / "link_client.py", *args[1:], "--port", str(port))
    return py(RAW_CLIENT, *args, "--port", str(port))


def pump_client(args: list[str], port: int) -> list[str]:
    return py(HERE / "pump.py", *args, "--port", str(port))
