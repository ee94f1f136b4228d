"""trivmc's client (library and `trivmc connect`) against QEMU's own spice-server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trivmc.client import SpiceLinkError, connect
from trivmc.protocol import LinkError

from .tools import LineReader, free_port, qemu

QMP_PORT = "org.qemu.monitor.qmp.0"


@asynccontextmanager
async def qemu_with_qmp_port(password: str | None = None) -> AsyncIterator[str]:
    port = free_port()
    spice = f"port={port},addr=127.0.0.1"
    args = ["-machine", "none"]
    if password is None:
        spice += ",disable-ticketing=on"
    else:
        args += ["-object", f"secret,id=sec0,data={password}"]
        spice += ",password-secret=sec0"
    args += [
        "-spice", spice,
        "-chardev", f"spiceport,id=qmp0,name={QMP_PORT}",
        "-mon", "chardev=qmp0,mode=control",
    ]  # fmt: skip
    async with qemu(args):
        yield f"spice://127.0.0.1:{port}"


async def qmp_exchange(uri: str, password: str | None = None) -> list[dict[str, object]]:
    async with connect(uri, password) as session:
        assert (3, 0) in session.channels  # QEMU lists inputs too; we never open it
        ch = await session.open_port(QMP_PORT)
        assert ch.opened is True
        lines = LineReader(ch)  # type: ignore[arg-type]
        with trio.fail_after(30):
            greeting = json.loads(await lines.readline())
            await ch.send_all(b'{"execute": "qmp_capabilities"}\n')
            caps = json.loads(await lines.readline())
            await ch.send_all(b'{"execute": "query-status"}\n')
            status = json.loads(await lines.readline())
        return [greeting, caps, status]


async def test_qmp_through_port_library() -> None:
    async with qemu_with_qmp_port() as uri:
        greeting, caps, status = await qmp_exchange(uri)
    assert "QMP" in greeting and greeting["QMP"]["version"]["qemu"]["major"] >= 7  # type: ignore[index]
    assert caps == {"return": {}}
    assert status["return"]["status"] in ("running", "prelaunch", "paused")  # type: ignore[index]


async def test_qmp_with_password() -> None:
    async with qemu_with_qmp_port(password="s3cret") as uri:
        with pytest.raises(SpiceLinkError) as info:
            await qmp_exchange(uri, password="wrong")
        assert info.value.code == LinkError.PERMISSION_DENIED
        _, caps, _ = await qmp_exchange(uri, password="s3cret")
    assert caps == {"return": {}}


async def test_trivmc_connect_in_a_pipeline() -> None:
    request = b'{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n'
    async with qemu_with_qmp_port() as uri:
        cmd = [sys.executable, "-m", "trivmc", "connect", uri, "--port", QMP_PORT, "--linger", "2"]
        with trio.fail_after(60):
            proc = await trio.run_process(cmd, stdin=request, capture_stdout=True, check=False)
    assert proc.returncode == 0
    replies = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert "QMP" in replies[0]
    assert {"return": {}} in replies
    assert any(
        "status" in r.get("return", {}) for r in replies if isinstance(r.get("return"), dict)
    )


async def test_trivmc_connect_wrong_password_exit_code() -> None:
    async with qemu_with_qmp_port(password="s3cret") as uri:
        cmd = [sys.executable, "-m", "trivmc", "connect", uri, "--port", QMP_PORT]
        proc = await trio.run_process(
            cmd,
            stdin=b"",
            capture_stderr=True,
            check=False,
            env={**os.environ, "SPICE_PASSWORD": "nope"},
        )
    assert proc.returncode == 3
    assert b"PERMISSION_DENIED" in proc.stderr
