"""Run one page's code blocks in order in a fresh directory (docs/guides/00-about-examples.md)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .blocks import Block

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = Path(__file__).resolve().parent / "wrapper.py"
BLOCK_TIMEOUT = 60.0
BACKGROUND = re.compile(r"(?<![&|])&\s*(#.*)?$")
WAITED = re.compile(r"^(\w+=\S*\s+)*trivmc\s+(serve|connect)\b")

PRELUDE = """\
set -euo pipefail
__docs_wait() {
    local line
    exec 9<>"$1"
    if ! read -r -t 60 -u 9 line; then
        echo "docs runner: a background command was not ready within 60 s" >&2
        return 1
    fi
    exec 9<&-
    if [ "$line" != ready ]; then
        echo "docs runner: a background command ended before it was ready ($line)" >&2
        return 1
    fi
}
"""


def shell_script(block: Block) -> str:
    """The block as a bash script: `set -euo pipefail`, and after each background
    `trivmc serve|connect ... &` a wait until that command is ready."""
    out = [PRELUDE]
    lines = block.code.splitlines()
    if block.lang == "console":  # `$ command` lines only; the rest is output
        cmds: list[str] = []
        cont = False
        for ln in lines:
            if ln.startswith("$ ") or cont:
                cmds.append(ln[2:] if ln.startswith("$ ") and not cont else ln)
                cont = ln.endswith("\\")
        lines = cmds
    logical: list[str] = []
    jobs = 0
    for ln in lines:
        logical.append(ln)
        if ln.endswith("\\"):
            continue
        text = "\n".join(logical)
        logical = []
        if BACKGROUND.search(text) and WAITED.match(text.lstrip()):
            jobs += 1
            fifo = f'"$DOCS_RUN/ready.{block.line}.{jobs}"'
            out += [
                f"mkfifo {fifo}",
                f"export TRIVMC_DOCS_READY={fifo}",
                text,
                "unset TRIVMC_DOCS_READY",
                f"__docs_wait {fifo}",
            ]
        else:
            out.append(text)
    out += logical
    return "\n".join(out) + "\n"


class Page:
    """A page's session: its directory, PATH, and the processes its blocks started."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.run_dir = tmp / ".docs-run"
        self.run_dir.mkdir()
        bin_dir = self.run_dir / "bin"
        bin_dir.mkdir()
        scripts = {
            "trivmc": f'exec {shlex.quote(sys.executable)} {shlex.quote(str(WRAPPER))} "$@"',
            "python3": f'exec {shlex.quote(sys.executable)} "$@"',
            "python": f'exec {shlex.quote(sys.executable)} "$@"',
        }
        for name, body in scripts.items():
            p = bin_dir / name
            p.write_text(f"#!/bin/sh\n{body}\n")
            p.chmod(0o755)
        for name in ("examples", "tests"):
            (tmp / name).symlink_to(ROOT / name)
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=pythonpath,
            DOCS_RUN=str(self.run_dir),
            PYTHONUNBUFFERED="1",
        )
        for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            self.env.pop(k, None)
        self.groups: list[int] = []
        self.n = 0

    def run(self, block: Block) -> None:
        if block.kind == "file":
            assert block.file is not None
            (self.dir / block.file).write_text(block.code)
            return
        self.n += 1
        log = self.run_dir / f"block{self.n}.log"
        if block.kind == "python":
            src = self.run_dir / f"block{self.n}_{block.path.stem}_{block.line}.py"
            src.write_text("\n" * block.line + block.code)  # tracebacks: the page's lines
            argv = [sys.executable, str(src)]
        else:
            src = self.run_dir / f"block{self.n}.sh"
            src.write_text(shell_script(block))
            argv = ["bash", str(src)]
        with open(log, "wb") as out:  # a file: background children may outlive the block
            proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.append(proc.pid)
        try:
            code = proc.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{block.where}: still running after {BLOCK_TIMEOUT:.0f} s\n{tail(log)}"
            ) from None
        if code != 0:
            raise AssertionError(f"{block.where}: exit status {code}\n{tail(log)}")

    def stop(self) -> None:
        """Stop what the blocks started: their process groups (SIGTERM, then SIGKILL),
        and daemons that left a pid file (`*.pid`, e.g. QEMU's -daemonize -pidfile)."""
        pids: list[int] = []
        for pidfile in self.dir.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.dir).encode() in cmdline:  # ours: it names our directory
                    pids.append(pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if sig == signal.SIGTERM and not wait_gone(self.groups, pids, 5.0):
                continue
            break


def wait_gone(groups: list[int], pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        for g in groups:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-g, os.WNOHANG)[0] > 0:
                    pass
            try:
                os.killpg(g, 0)
                alive.append(g)
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            return True
        time.sleep(0.05)  # polling for exits of processes that are not our children
    return False


def tail(log: Path, n: int = 4000) -> str:
    text = log.read_text(errors="replace")
    return text[-n:]


@contextlib.contextmanager
def page_session() -> Iterator[Page]:
    with tempfile.TemporaryDirectory(prefix="trivmc-docs-") as tmp:
        page = Page(Path(tmp))
        try:
            yield page
        finally:
            page.stop()
