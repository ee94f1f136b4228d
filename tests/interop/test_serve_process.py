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


async def test_metrics_of_the_demo() -> None:
    """`--metrics` serves the demo's counters: the bytes a client sent are there."""
    cmd = [sys.executable, "-m", "trivmc", "serve", "--listen", "127.0.0.1:0"]
    cmd += ["--metrics", "127.0.0.1:0"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout)
        with trio.fail_after(30):
            first = (await lines.readline()).decode()
            while not (line := (await lines.readline()).decode()).startswith("trivmc: metrics"):
                pass
        assert first.startswith("trivmc: serving spice://127.0.0.1:"), first
        assert line.startswith("trivmc: metrics on http://127.0.0.1:"), line
        host, _, port = line.split("//")[1].split("/")[0].rpartition(":")
        async with connect(first.split()[-1]) as session:
            ch = await session.open_port("org.trivmc.echo.0")
            await ch.send_all(b"demo")
            with trio.fail_after(10):
                assert await ch.receive_some() == b"demo"
            async with await trio.open_tcp_stream(host, int(port)) as http:
                await http.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                response = b""
                with trio.fail_after(10):
                    while data := await http.receive_some():
                        response += data
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        line = b'trivmc_vmc_in_data_bytes_total{id="0",name="org.trivmc.echo.0",type="port"} 4.0'
        assert line in response.splitlines()
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
