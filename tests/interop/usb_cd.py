"""One scenario shared by the gateway test and the reference test: spice-gtk redirects
an emulated USB CD; QMP shows the usb-redir device attach (480 Mb/s) and detach."""

from __future__ import annotations

import json

import trio

from .tools import LineReader, Qmp, gtk_process


async def wait_usb_speed(qmp: Qmp, speed: str, timeout: float = 30.0) -> float:
    """Poll QMP `info usb` until redir0 shows `speed`; return the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while True:
            info = await qmp.hmp("info usb")
            if "redir0" in info and speed in info:
                return trio.current_time() - start
            await trio.sleep(0.005)  # QEMU emits no event for a USB attach: poll QMP


async def redirect_cd_then_detach(uri: str, iso: str, qmp: Qmp) -> float:
    """Redirect the CD through `uri`, wait until QEMU has it, disconnect it, wait until
    QEMU dropped it. Returns seconds from connect_device_async to attached."""
    assert "1.5 Mb/s" in await qmp.hmp("info usb")
    async with gtk_process("usbredir-cd", uri, iso) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lines = LineReader(proc.stdout)
        while True:
            ev = json.loads(await lines.readline())
            if ev.get("event") in ("connected", "connect-error", "no-shared-cd"):
                break
        assert ev == {**ev, "event": "connected", "ok": True}
        secs = float(ev["seconds"]) + await wait_usb_speed(qmp, "480 Mb/s")
        await proc.stdin.send_all(b"disconnect\n")
        while json.loads(await lines.readline()).get("event") != "disconnected":
            pass
        await wait_usb_speed(qmp, "1.5 Mb/s")
    return secs
