"""Helpers for interop tests: real spice-gtk, real QEMU, QMP.

A missing tool skips the test, unless ``TRIVMC_REQUIRE_INTEROP=1`` (CI sets it): then it
is a failure. Every process started here is killed and reaped by the context manager
that started it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import trio

HERE = Path(__file__).resolve().parent
GTK_CLIENT = HERE / "gtk_client.py"
SYSTEM_PYTHON = "/usr/bin/python3"
QEMU = "qemu-system-x86_64"
URI_PATTERN = r"(spice(\+unix)?://\S+)"


def interop_required() -> bool:
    return os.environ.get("TRIVMC_REQUIRE_INTEROP", "") not in ("", "0")


def missing(what: str) -> None:
    """Skip, or fail when interop tests are required."""
    msg = f"interop tool missing: {what}"
    if interop_required():
        pytest.fail(msg + " (TRIVMC_REQUIRE_INTEROP is set)")
    pytest.skip(msg)


@functools.cache
def _gtk_ok() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = (
        "import gi; gi.require_version('SpiceClientGLib', '2.0'); "
        "from gi.repository import SpiceClientGLib"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=60)
    return r.returncode == 0


def require_gtk() -> None:
    if not _gtk_ok():
        missing("spice-gtk (gir1.2-spiceclientglib-2.0 + python3-gi for /usr/bin/python3)")


def require_qemu() -> None:
    if shutil.which(QEMU) is None:
        missing(QEMU + " (Debian qemu-system-x86)")


def require_genisoimage() -> None:
    if shutil.which("genisoimage") is None:
        missing("genisoimage")


async def run_gtk(
    *args: str, timeout: float = 60.0, password: str | None = None, ca_file: str | None = None
) -> dict[str, Any]:
    """Run one gtk_client.py scenario to its end; return its final JSON object."""
    require_gtk()
    cmd = [SYSTEM_PYTHON, str(GTK_CLIENT), "--timeout", str(timeout)]
    if password is not None:
        cmd += ["--password", password]
    if ca_file is not None:
        cmd += ["--ca-file", ca_file]
    cmd += list(args)
    with trio.fail_after(timeout + 30):
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("{")]
    assert lines, f"gtk client printed nothing; stderr:\n{proc.stderr.decode()[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["_returncode"] = proc.returncode
    result["_stderr"] = proc.stderr.decode()[-3000:]
    return result


@asynccontextmanager
async def gtk_process(
    *args: str,
    timeout: float = 60.0,
    script: Path = GTK_CLIENT,
    stderr: int | IO[bytes] = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> AsyncIterator[trio.Process]:
    """Start a long-running spice-gtk driver `script` (gtk_client.py by default) with
    pipes, its stderr to `stderr`, `env` added to the environment; kill it on exit."""
    require_gtk()
    cmd = [SYSTEM_PYTHON, str(script), "--timeout", str(timeout), *args]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **(env or {})},
                check=False,
            )
        )
        try:
            yield proc
        finally:
            proc.kill()


class LineReader:
    """Read newline-terminated lines from a trio receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def readline(self) -> bytes:
        while b"\n" not in self._buf:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("stream closed before a full line")
            self._buf += data
        i = self._buf.index(b"\n") + 1
        line = bytes(self._buf[:i])
        del self._buf[:i]
        return line


class Qmp:
    """A minimal QMP client over a connected trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = LineReader(stream)
        self.greeting: dict[str, Any] = {}

    async def handshake(self) -> None:
        self.greeting = json.loads(await self.reader.readline())
        await self.command("qmp_capabilities")

    async def command(self, name: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        await self.stream.send_all(json.dumps(msg).encode() + b"\n")
        while True:
            reply = json.loads(await self.reader.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP error: {reply['error']}")

    async def hmp(self, line: str) -> str:
        return str(await self.command("human-monitor-command", **{"command-line": line}))


def listening_socket(family: int = socket.AF_INET, reuse_addr: bool = False) -> socket.socket:
    """A loopback listening socket (port chosen by the kernel) to hand to QEMU.

    With `reuse_addr`, SO_REUSEADDR is set, and it is inherited by the connections
    accepted on it: a later listener (QEMU's own, say) can bind the same port again
    while an old connection still sits in TIME_WAIT."""
    s = socket.socket(family, socket.SOCK_STREAM)
    if reuse_addr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for programs that take no fd)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def qemu(
    extra_args: Sequence[str], pass_fds: Sequence[int] = (), stderr: list[str] | None = None
) -> AsyncIterator[Qmp]:
    """Start QEMU with a QMP monitor on a pre-bound unix socket; yield a ready Qmp.

    The QMP greeting arrives after machine init, so every listener QEMU opens (its
    SPICE port, socket chardevs) is up once this yields. QEMU is killed on exit.
    QEMU's stderr is always drained; with `stderr`, its lines are appended there.
    """
    require_qemu()
    with tempfile.TemporaryDirectory(prefix="trivmc-qemu-") as tmp:
        path = os.path.join(tmp, "qmp.sock")
        qsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        qsock.bind(path)
        qsock.listen(1)
        cmd = [
            QEMU,
            "-nodefaults",
            "-display",
            "none",
            "-chardev",
            f"socket,id=qmpmon,fd={qsock.fileno()},server=on,wait=off",
            "-mon",
            "chardev=qmpmon,mode=control",
            *extra_args,
        ]
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    cmd,
                    pass_fds=(qsock.fileno(), *pass_fds),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            qsock.close()
            assert proc.stderr is not None
            if stderr is None:
                nursery.start_soon(_drain, proc.stderr)
            else:
                nursery.start_soon(_collect, proc.stderr, stderr)
            try:
                with trio.fail_after(30):
                    stream = await trio.open_unix_socket(path)
                    qmp = Qmp(stream)
                    await qmp.handshake()
                yield qmp
                await stream.aclose()
            finally:
                proc.kill()


def make_iso(directory: str) -> str:
    """A small ISO 9660 image for spice-gtk's emulated USB CD."""
    require_genisoimage()
    src = os.path.join(directory, "iso-src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "README.TXT"), "w") as f:
        f.write("trivmc usbredir test medium\n")
    iso = os.path.join(directory, "small.iso")
    subprocess.run(["genisoimage", "-quiet", "-o", iso, src], check=True, timeout=60)
    return iso


@asynccontextmanager
async def trivmc_serve(
    *args: str,
    log: list[str] | None = None,
    announce: str = URI_PATTERN,
    procs: list[trio.Process] | None = None,
) -> AsyncIterator[str]:
    """Run `python -m trivmc serve ARGS` (listening on a kernel-chosen port unless ARGS
    say otherwise); yield the spice:// URI it announces (the first match of `announce`,
    group 1); stop it on exit. `procs` gets the process."""
    import sys

    cmd = [sys.executable, "-m", "trivmc", "serve", *args]
    if "--listen" not in args and "--unix" not in args and "--await-handover" not in args:
        cmd += ["--listen", "127.0.0.1:0"]
    async with announcing_process(cmd, log, announce, procs) as uri:
        yield uri


@asynccontextmanager
async def announcing_process(
    cmd: Sequence[str],
    log: list[str] | None = None,
    announce: str = URI_PATTERN,
    procs: list[trio.Process] | None = None,
) -> AsyncIterator[str]:
    """Run a server process; yield the first spice:// URI it prints; stop it on exit.
    With `log`, the process's stderr lines are appended to it as they come; `procs`
    gets the process."""
    import re

    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None if log is None else subprocess.PIPE,
                check=False,
            )
        )
        if procs is not None:
            procs.append(proc)
        if log is not None:
            assert proc.stderr is not None
            nursery.start_soon(_collect, proc.stderr, log)
        try:
            assert proc.stdout is not None
            reader = LineReader(proc.stdout)
            with trio.fail_after(30):
                while True:
                    line = (await reader.readline()).decode()
                    m = re.search(announce, line)
                    if m:
                        break
            # keep draining stdout so the server never blocks on a full pipe
            nursery.start_soon(_drain, proc.stdout)
            yield m.group(1)
        finally:
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
            proc.kill()


async def _collect(stream: trio.abc.ReceiveStream, log: list[str]) -> None:
    reader = LineReader(stream)
    with contextlib.suppress(EOFError):
        while True:
            log.append((await reader.readline()).decode(errors="replace"))


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass
