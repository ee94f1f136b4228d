"""The runnable examples, started as a user would, driven by trivmc's client."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import trio

from trivmc.client import connect

from .tools import LineReader, announcing_process, listening_socket, qemu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_echo_port_server_example() -> None:
    cmd = [sys.executable, str(EXAMPLES / "echo_port_server.py"), "--port", "0"]
    async with announcing_process(cmd) as uri, connect(uri) as session:
        ch = await session.open_port("org.example.upper.0")
        assert ch.opened
        await ch.send_all(b"hello trivmc\n")
        with trio.fail_after(10):
            assert await LineReader(ch).readline() == b"HELLO TRIVMC\n"


async def test_qmp_port_example() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qmp2.sock")
        async with qemu(["-machine", "none", "-qmp", f"unix:{path},server=on,wait=off"]):
            cmd = [sys.executable, str(EXAMPLES / "qmp_port.py"), path, "--port", "0"]
            async with announcing_process(cmd) as uri, connect(uri) as session:
                ch = await session.open_port("org.qemu.monitor.qmp.0")
                lines = LineReader(ch)
                with trio.fail_after(20):
                    assert "QMP" in json.loads(await lines.readline())
                    await ch.send_all(b'{"execute":"qmp_capabilities"}\n')
                    assert json.loads(await lines.readline()) == {"return": {}}


async def test_usbredir_gateway_example_lists_channels() -> None:
    """Two QEMU usb-redir sockets: each channel is offered once its QEMU side said its
    hello, and that hello is the first thing the client of the channel reads."""
    a, b = listening_socket(), listening_socket()
    a.settimeout(10)  # bounds the accepts below
    b.settimeout(10)
    targets = [f"127.0.0.1:{s.getsockname()[1]}" for s in (a, b)]
    cmd = [
        sys.executable,
        str(EXAMPLES / "usbredir_gateway.py"),
        *targets,
        "--listen",
        "127.0.0.1:0",
    ]
    async with announcing_process(cmd) as uri, connect(uri, lz4=False) as session:
        conns = []
        for sock, hello in ((a, b"hello from A"), (b, b"hello from B")):
            conn, _ = await trio.to_thread.run_sync(sock.accept)  # the gateway connects
            conn.sendall(hello)  # and QEMU speaks first
            conns.append(conn)
        with trio.fail_after(10):  # offered (announced) once each QEMU side spoke
            await session.wait_channel(9, 0)
            await session.wait_channel(9, 1)
        redir = await session.open_usbredir(1)
        with trio.fail_after(10):
            assert await redir.receive_some() == b"hello from B"
        for conn in conns:
            conn.close()
    a.close()
    b.close()
