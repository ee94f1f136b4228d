"""`trivmc serve` as a process: the built-in demo answers, Ctrl-C stops it cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys

import trio

from trivmc.client import connect

from .tools import LineReader


async def test_demo_then_ctrl_c() -> None:
    cmd = [sys.executable, "-m", "trivmc", "serve", "--listen", "127.0.0.1:0"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout)
        with trio.fail_after(30):
            first = (await lines.readline()).decode()
        assert first.startswith("trivmc: serving spice://127.0.0.1:")
        uri = first.split()[-1]
        async with connect(uri) as session:
            ch = await session.open_port("org.trivmc.echo.0")
            await ch.send_all(b"demo")
            with trio.fail_after(10):
                assert await ch.receive_some() == b"demo"
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
