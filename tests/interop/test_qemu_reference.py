"""The reference behaviour: spice-gtk redirects an emulated USB CD through QEMU's own
spice-server (`-chardev spicevmc,name=usbredir`). trivmc's gateway must match it."""

from __future__ import annotations

import json
import tempfile

import trio

from .tools import LineReader, free_port, gtk_process, make_iso, qemu

pytestmark = []


async def wait_usb_speed(qmp: object, speed: str, timeout: float = 30.0) -> float:
    """Poll QMP `info usb` until redir0 shows `speed`; return seconds taken."""
    from .tools import Qmp

    assert isinstance(qmp, Qmp)
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            info = await qmp.hmp("info usb")
            if "redir0" in info and speed in info:
                return trio.current_time() - start
            await trio.sleep(0.02)  # QEMU emits no event for a USB attach: poll QMP


async def test_usb_cd_through_qemu_spice_server() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        iso = make_iso(tmp)
        args = [
            "-machine",
            "pc",
            "-device",
            "qemu-xhci",
            "-chardev",
            "spicevmc,id=ur0,name=usbredir",
            "-device",
            "usb-redir,chardev=ur0,id=redir0",
            "-spice",
            f"port={port},addr=127.0.0.1,disable-ticketing=on",
        ]
        async with qemu(args) as qmp:
            assert "1.5 Mb/s" in await qmp.hmp("info usb")
            async with gtk_process("usbredir-cd", f"spice://127.0.0.1:{port}", iso) as proc:
                assert proc.stdout is not None and proc.stdin is not None
                lines = LineReader(proc.stdout)
                while True:
                    ev = json.loads(await lines.readline())
                    if ev.get("event") in ("connected", "connect-error", "no-shared-cd"):
                        break
                assert ev == {**ev, "event": "connected", "ok": True}
                secs = ev["seconds"] + await wait_usb_speed(qmp, "480 Mb/s")
                print(
                    f"QEMU's spice-server: connect_device_async -> attached in {secs * 1e3:.0f} ms"
                )
                await proc.stdin.send_all(b"disconnect\n")
                while json.loads(await lines.readline()).get("event") != "disconnected":
                    pass
                await wait_usb_speed(qmp, "1.5 Mb/s")
