"""Side-by-side benchmarks: trivmc vs the C spice-server anchor, measured in one run.

Run with `nox -s bench` (or `python -m benchmarks`). Each scenario starts the anchor
(`../shared/anchor`, built on demand with its build.sh) and a trivmc server with the
equivalent device, drives both with the same raw SPICE load client
(`../shared/anchor/raw_client.py`), alternating runs, and prints one JSON line per
scenario with both medians and the ratio trivmc / anchor. The machine is shared and
noisy: only the ratios are meaningful, and only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TRIVMC_SHARED", ROOT.parent / "shared"))
ANCHOR_DIR = SHARED / "anchor"
RAW_CLIENT = ANCHOR_DIR / "raw_client.py"
PORT_NAME = "org.trivmc.bench.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anchor_binary() -> Path:
    """Build the anchor once into a cache folder; return its path."""
    out = ROOT / ".nox" / "anchor-server"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(ANCHOR_DIR / "build.sh"), str(out)], check=True)
    return out


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Block until something accepts on 127.0.0.1:port (the server process is starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def server(cmd: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def anchor_cmd(port: int, mode: str, nbytes: int | None) -> list[str]:
    cmd = [str(anchor_binary()), "-p", str(port), "-n", PORT_NAME, "-m", mode]
    if nbytes is not None:
        cmd += ["-N", str(nbytes)]
    return cmd


def trivmc_cmd(port: int, mode: str, nbytes: int | None) -> list[str]:
    if mode == "sink":
        return [
            sys.executable,
            str(Path(__file__).with_name("sink_server.py")),
            f"127.0.0.1:{port}",
            PORT_NAME,
            str(nbytes),
        ]
    backend = {"echo": "echo", "source": f"source:{nbytes}"}[mode]
    return [
        sys.executable,
        "-m",
        "trivmc",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--disable-ticketing",
        "--port",
        f"{PORT_NAME}={backend}",
    ]


GTK_CLIENT = ROOT / "tests" / "interop" / "gtk_client.py"


def gtk_echo(port: int, args: list[str]) -> dict[str, object]:
    """spice-gtk (Debian's, via /usr/bin/python3) echoing args[0] bytes through a port."""
    nbytes = int(args[0])
    cmd = ["/usr/bin/python3", str(GTK_CLIENT), "--timeout", "120", "port-echo"]
    cmd += [f"spice://127.0.0.1:{port}", PORT_NAME, str(nbytes)]
    r = subprocess.run(cmd, capture_output=True, check=True, timeout=300)
    res = json.loads(r.stdout.decode().strip().splitlines()[-1])
    if res.get("recv_sha256") != res.get("sent_sha256"):
        raise RuntimeError("spice-gtk echo came back different")
    return {"MBps": round(nbytes / res["seconds"] / 1e6, 2)}


def raw_client(port: int, args: list[str]) -> dict[str, object]:
    cmd = [sys.executable, str(RAW_CLIENT), *args, "--port", str(port)]
    r = subprocess.run(cmd, capture_output=True, check=True, timeout=300)
    result: dict[str, object] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    return result


SCENARIOS: dict[str, tuple[str, list[str], str, bool]] = {
    # name: (device mode, raw_client args, metric, higher is better)
    "send_64k": ("sink", ["send", "--msg-size", "65536", "--total", "{N}"], "MBps", True),
    "send_4k": ("sink", ["send", "--msg-size", "4096", "--total", "{N}"], "MBps", True),
    "send_64k_lz4_text": (
        "sink",
        ["send", "--msg-size", "65536", "--total", "{N}", "--pattern", "text", "--lz4"],
        "MBps",
        True,
    ),
    "recv_pattern": ("source", ["recv", "--total", "{N}", "--pattern", "counter"], "MBps", True),
    "echo_64b": ("echo", ["echo", "--msg-size", "64", "--count", "500"], "median_us", False),
    "link": ("echo", ["link", "--count", "20"], "median_ms", False),
    "gtk_echo_8mib": ("echo", ["gtk", "8388608"], "MBps", True),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="alternating runs per scenario")
    p.add_argument("--total", type=int, default=64 << 20, help="bytes per throughput run")
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    a = p.parse_args()
    if shutil.which("gcc") is None or not RAW_CLIENT.exists():
        print("benchmarks need ../shared/anchor and gcc", file=sys.stderr)
        return 2
    for name in a.scenarios:
        mode, template, metric, higher = SCENARIOS[name]
        args = [x.replace("{N}", str(a.total)) for x in template]
        nbytes = a.total if mode in ("sink", "source") else None
        values: dict[str, list[float]] = {"anchor": [], "trivmc": []}
        for _ in range(a.runs):
            for who, make in (("anchor", anchor_cmd), ("trivmc", trivmc_cmd)):
                port = free_port()
                with server(make(port, mode, nbytes), port):
                    res = gtk_echo(port, args[1:]) if args[0] == "gtk" else raw_client(port, args)
                value = res[metric]
                assert isinstance(value, int | float)
                values[who].append(float(value))
        med = {k: statistics.median(v) for k, v in values.items()}
        ratio = med["trivmc"] / med["anchor"] if med["anchor"] else float("nan")
        print(
            json.dumps(
                {
                    "scenario": name,
                    "metric": metric,
                    "higher_is_better": higher,
                    "anchor": med["anchor"],
                    "trivmc": med["trivmc"],
                    "ratio_trivmc_over_anchor": round(ratio, 3),
                    "runs": a.runs,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
