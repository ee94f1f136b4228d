"""Rows that are not one client against three servers: memory, 1000 live sessions, and
spice-gtk echo (plain and TLS). Plus the checks every client result must pass."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .hostile import hostile_rows
from .procs import (
    GTK_CLIENT,
    HERE,
    PORT_NAME,
    CpuSnapshot,
    children,
    cpu_seconds,
    cpu_snapshot,
    cpu_used,
    free_port,
    pin_client,
    py,
    rss_kib,
    run_json,
    server,
    stop_client,
    wait_idle,
    wait_listening,
)
from .report import CPU, KEYS_CPU, Result, cpu_per_gb
from .rows import Row, Sizes, anchor_cmd, pump_cmd, trivmc_cmd

PER_SERVER = 250  # port channels per SPICE server (a channel id is one byte)


@contextlib.contextmanager
def servers(
    cmds: dict[str, tuple[list[str], int]],
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Every server of `cmds` running (and listening) for the block; all stopped after."""
    with contextlib.ExitStack() as stack:
        yield {who: stack.enter_context(server(cmd, port)) for who, (cmd, port) in cmds.items()}


def check(row: Row, res: dict[str, object], nbytes: int) -> None:
    """Nothing lost or corrupted: the device got every byte, the pattern held."""
    if res.get("mismatches"):
        raise RuntimeError(f"{row.key}: {res['mismatches']} corrupted messages")
    device = res.get("device")
    if isinstance(device, dict) and device.get("bytes") != res.get("total"):
        raise RuntimeError(f"{row.key}: device got {device.get('bytes')} of {res.get('total')}")
    if row.key == "lz4_text_64k" and not res.get("lz4_used", True):
        raise RuntimeError(f"{row.key}: the server did not offer LZ4")


def rss_rows(sizes: Sizes, runs: int, anchor: Path | None, tmp: Path) -> list[Result]:
    """RSS of each server idle (an echo port, nothing connected, done starting), `runs`
    fresh starts; and of trivmc's key-maker processes (the server's children) in the
    same starts."""
    result = Result("rss_idle", "RSS, server idle (one echo port)", "MiB", False)
    keys = Result("rss_keys", "RSS of a key-maker process (trivmc's key worker)", "MiB", False)
    workers: list[int] = []
    for _ in range(runs):
        makers: dict[str, list[str]] = {}
        port = free_port()
        makers["trivmc"] = trivmc_cmd(port, "echo", 0)
        if anchor is not None:
            makers["spice-server"] = anchor_cmd(str(anchor), port, "echo", 0)
        makers["pump"] = pump_cmd(port, "echo", 0)
        for who, cmd in makers.items():
            with server(cmd, port) as proc:
                wait_idle(proc.pid)  # done starting: trivmc's key pool full
                result.add(who, {"rss": rss_kib(proc.pid) / 1024}, "rss")
                if who == "trivmc":
                    kids = children(proc.pid)
                    workers.append(len(kids))
                    for kid in kids:
                        keys.add(who, {"rss": rss_kib(kid) / 1024}, "rss")
    result.metric = keys.metric = "rss"
    result.note = (
        "the server process alone; trivmc's key-maker processes are counted in the next row"
    )
    keys.text["spice-server"] = "n/a: makes its keys in the server process"
    keys.text["pump"] = "n/a"
    keys.note = (
        f"each worker process (`keygen_worker.py`: the interpreter and cryptography) of a"
        f" trivmc serve idle, {'/'.join(map(str, sorted(set(workers))))} per server: one per"
        " core the server may use, here 1 as it is pinned; trivmc all told is the server's"
        " RSS plus this for each worker"
    )
    return [result, keys]


@contextlib.contextmanager
def session_client(
    kind: str, port: int, sizes: Sizes, runs: int
) -> Iterator[subprocess.Popen[str]]:
    cmd = py(HERE / "sessions_client.py", kind, "--port", str(port))
    cmd += ["--sessions", str(sizes.sessions), "--per-server", str(PER_SERVER)]
    cmd += ["--bytes", str(sizes.session_bytes), "--rounds", str(runs)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin_client,
    )
    try:
        yield proc
    finally:
        stop_client(proc, 60)


def _expect(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        err = proc.stderr.read()[-800:] if proc.stderr else ""
        raise RuntimeError(f"sessions client: expected {prefix}, got {line!r}: {err}")
    return line


@dataclass(frozen=True)
class SessionsRun:
    """One server's part of the sessions row: its RSS (KiB) idle, linked and after the
    echo rounds, each round's MB/s; and over the echo rounds, the CPU seconds (user +
    system) and the times it slept (voluntary context switches) of the server and of
    the load client, and the rounds' wall time. The one of the two that hardly ever
    slept is the limit."""

    idle: int
    linked: int
    after: int
    rounds: list[float]
    server_cpu: float
    keys_cpu: float  # the server's children (trivmc's key makers)
    client_cpu: float
    server_sleeps: int
    client_sleeps: int
    wall: float

    def cpu_text(self) -> str:
        return (
            f"server {self.server_cpu:.2f} s (slept {self.server_sleeps}x), client"
            f" {self.client_cpu:.2f} s (slept {self.client_sleeps}x) in {self.wall:.2f} s"
        )


def voluntary_switches(pid: int) -> int:
    """How many times a process (its main thread) gave up the CPU to wait."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError(f"no voluntary_ctxt_switches for {pid}")


@dataclass(frozen=True)
class _Usage:
    server: CpuSnapshot
    client_cpu: float
    server_sleeps: int
    client_sleeps: int
    clock: float


def _usage(server_pid: int, client_pid: int) -> _Usage:
    return _Usage(
        cpu_snapshot(server_pid, with_children=True),
        cpu_seconds(client_pid),
        voluntary_switches(server_pid),
        voluntary_switches(client_pid),
        time.perf_counter(),
    )


def _wait_for_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path}")
        time.sleep(0.1)


def _sessions_run(kind: str, cmd: list[str], port: int, sizes: Sizes, runs: int) -> SessionsRun:
    """Start the server, let it finish starting, link every session, run the rounds."""
    last = port + (-(-sizes.sessions // PER_SERVER) - 1 if kind == "spice" else 0)
    # the many-ports server opens its listeners in order: the last one up means all are
    with server(cmd, last) as srv:
        wait_idle(srv.pid)  # done starting (trivmc's key pool full), as for the RSS row
        idle = rss_kib(srv.pid)
        return _sessions_echo(kind, srv, idle, port, sizes, runs)


def _sessions_echo(
    kind: str, srv: subprocess.Popen[bytes], idle: int, port: int, sizes: Sizes, runs: int
) -> SessionsRun:
    """The load client's sessions linked, then its echo rounds, with the readings."""
    with session_client(kind, port, sizes, runs) as client:
        _expect(client, "CONNECTED")
        linked = rss_kib(srv.pid)
        assert client.stdin is not None
        profile = os.environ.get("TRIVMC_BENCH_PROFILE", "") if kind == "spice" else ""
        if profile:  # many_ports_server.py profiles itself from SIGUSR1 to SIGUSR2
            Path(profile).unlink(missing_ok=True)
            os.kill(srv.pid, signal.SIGUSR1)
        usage0 = _usage(srv.pid, client.pid)
        client.stdin.write("\n")
        client.stdin.flush()
        res = json.loads(_expect(client, "{"))
        usage1 = _usage(srv.pid, client.pid)
        if profile:
            os.kill(srv.pid, signal.SIGUSR2)
            _wait_for_file(Path(profile))
        after = rss_kib(srv.pid)
    return SessionsRun(
        idle,
        linked,
        after,
        [float(x) for x in res["MBps"]],
        *cpu_used(usage0.server, usage1.server),
        usage1.client_cpu - usage0.client_cpu,
        usage1.server_sleeps - usage0.server_sleeps,
        usage1.client_sleeps - usage0.client_sleeps,
        usage1.clock - usage0.clock,
    )


def sessions_rows(sizes: Sizes, runs: int, anchor: Path | None, tmp: Path) -> list[Result]:
    """1000 live port sessions in one trivmc process; RSS per session and aggregate echo."""
    n = sizes.sessions
    servers_needed = -(-n // PER_SERVER)
    port = free_port(servers_needed)
    cmd = py(HERE / "many_ports_server.py", str(port), str(servers_needed), str(PER_SERVER))
    trivmc = _sessions_run("spice", cmd, port, sizes, runs)
    pport = free_port()
    pump = _sessions_run("raw", pump_cmd(pport, "echo", 0, many=True), pport, sizes, runs)
    idle, linked, after = trivmc.idle, trivmc.linked, trivmc.after
    per = Result(
        "rss_per_session",
        f"RSS per live port session ({n} sessions, one process)",
        "KiB",
        False,
        limit=64,
        metric="kib",
    )
    per.add("trivmc", {"kib": (after - idle) / n})
    per.add("pump", {"kib": (pump.after - pump.idle) / n})
    per.text["spice-server"] = "n/a: the anchor has one port device"
    per.note = (
        f"(RSS after the echo rounds - RSS of the same process idle) / {n}; trivmc: "
        f"{servers_needed} SPICE servers x {PER_SERVER} echo ports in one process (a channel "
        f"id is one byte), idle {idle / 1024:.1f} MiB, linked {linked / 1024:.1f} MiB, after "
        f"echo {after / 1024:.1f} MiB ({after / n:.0f} KiB per session all told); pump: "
        f"{n} plain TCP connections to one Python process"
    )
    agg = Result(
        "sessions_echo", f"aggregate echo across {n} sessions", "MB/s", True, metric="MBps"
    )
    for r in trivmc.rounds:
        agg.add("trivmc", {"MBps": r})
    for r in pump.rounds:
        agg.add("pump", {"MBps": r})
    for who, run in (("trivmc", trivmc), ("pump", pump)):
        moved = 2 * sizes.session_bytes * n * len(run.rounds)  # out and back, as the MB/s
        agg.add_value(who, CPU, cpu_per_gb(run.server_cpu, moved))
        if who == "trivmc":
            agg.add_value(who, KEYS_CPU, cpu_per_gb(run.keys_cpu, moved))
    agg.text["spice-server"] = "n/a: one session at a time"
    agg.note = (
        f"each session echoes {sizes.session_bytes // 1024} KiB in 4 KiB writes, all at once;"
        " bytes out and back / time; the load client (`sessions_client.py`) is lean for both"
        " columns: one process, plain non-blocking sockets in one selector loop, SPICE"
        " through the sans-IO `trivmc.protocol`; server CPU per GB out and back, all the"
        " rounds together; CPU over the echo rounds (the process that hardly slept is the"
        f" limit): trivmc {trivmc.cpu_text()}; pump {pump.cpu_text()}"
    )
    t, p = agg.median("trivmc"), agg.median("pump")
    if t and p:
        agg.note += f"; trivmc / pump in this run: {t / p:.2f}"
    return [per, agg]


def _pki(tmp: Path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: str(tmp / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    # the same files in QEMU's x509-dir layout, for the anchor's -c
    x509 = tmp / "x509"
    x509.mkdir(exist_ok=True)
    for name, qemu_name in (("ca", "ca-cert"), ("cert", "server-cert"), ("key", "server-key")):
        (x509 / f"{qemu_name}.pem").write_bytes(Path(files[name]).read_bytes())
    files["x509_dir"] = str(x509)
    return files


def _gtk_echo(uri: str, nbytes: int, ca_file: str | None = None) -> dict[str, object]:
    cmd = ["/usr/bin/python3", str(GTK_CLIENT), "--timeout", "120"]
    if ca_file:
        cmd += ["--ca-file", ca_file]
    res = run_json([*cmd, "port-echo", uri, PORT_NAME, str(nbytes)])
    if res.get("recv_sha256") != res.get("sent_sha256") or "seconds" not in res:
        raise RuntimeError(f"spice-gtk echo failed or came back different: {res}")
    seconds = res["seconds"]
    assert isinstance(seconds, int | float)
    return {"MBps": round(nbytes / seconds / 1e6, 2)}


def gtk_rows(sizes: Sizes, runs: int, anchor: Path | None, tmp: Path) -> list[Result]:
    """spice-gtk (the real client) echoing through a port: plain and over TLS, on both
    servers (the anchor with QEMU's x509-dir layout)."""
    probe = "import gi; gi.require_version('SpiceClientGLib', '2.0')"
    if not Path("/usr/bin/python3").exists() or not GTK_CLIENT.exists():
        print("spice-gtk rows skipped: no Debian python3", file=sys.stderr)
        return []
    if subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode:
        print("spice-gtk rows skipped: gir1.2-spiceclientglib-2.0 is missing", file=sys.stderr)
        return []
    mib = sizes.gtk_bytes >> 20
    plain = Result("gtk_echo", f"spice-gtk echo, {mib} MiB", "MB/s", True, metric="MBps")
    tls = Result("gtk_echo_tls", f"spice-gtk echo over TLS, {mib} MiB", "MB/s", True, 1.0)
    tls.metric = "MBps"
    pki = _pki(tmp)
    port, tport, aport, atport = free_port(), free_port(), free_port(), free_port()
    tls_opts = ["--tls-listen", f"127.0.0.1:{tport}", "--cert", pki["cert"], "--key", pki["key"]]
    tcmd = [*trivmc_cmd(port, "echo", 0), *tls_opts]
    cmds = {"trivmc": (tcmd, port)}
    if anchor is not None:
        acmd = anchor_cmd(str(anchor), aport, "echo", 0)
        cmds["spice-server"] = ([*acmd, "-T", str(atport), "-c", pki["x509_dir"]], aport)
    with servers(cmds) as procs:
        wait_listening(tport, procs["trivmc"])
        if anchor is not None:
            wait_listening(atport, procs["spice-server"])
        for _ in range(runs):
            plain.add("trivmc", _gtk_echo(f"spice://127.0.0.1:{port}", sizes.gtk_bytes))
            if anchor is not None:
                plain.add("spice-server", _gtk_echo(f"spice://127.0.0.1:{aport}", sizes.gtk_bytes))
            uri = f"spice://127.0.0.1?tls-port={tport}"
            tls.add("trivmc", _gtk_echo(uri, sizes.gtk_bytes, pki["ca"]))
            if anchor is not None:
                uri = f"spice://127.0.0.1?tls-port={atport}"
                tls.add("spice-server", _gtk_echo(uri, sizes.gtk_bytes, pki["ca"]))
    notes = []
    for who in ("trivmc", "spice-server"):
        t, p = tls.median(who), plain.median(who)
        if t and p:
            notes.append(f"{who} {t / p:.2f}")
    if notes:
        tls.note = "TLS / plain in this run: " + ", ".join(notes)
    plain.text["pump"] = tls.text["pump"] = "n/a"
    return [plain, tls]


SPECIAL: list[tuple[str, Callable[[Sizes, int, Path | None, Path], list[Result]]]] = [
    ("rss", rss_rows),
    ("sessions", sessions_rows),
    ("gtk", gtk_rows),
    ("hostile", hostile_rows),
]
