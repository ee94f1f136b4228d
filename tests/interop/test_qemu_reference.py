"""The reference behaviour: spice-gtk redirects an emulated USB CD through QEMU's own
spice-server (`-chardev spicevmc,name=usbredir`). trivmc's gateway must match it."""

from __future__ import annotations

import tempfile

import trio

from .tools import free_port, make_iso, qemu
from .usb_cd import REDIR_DEBUG, assert_clean_usbredir_log, redirect_cd_then_detach, replug


async def test_usb_cd_through_qemu_spice_server() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        iso = make_iso(tmp)
        args = [
            "-machine", "pc", "-device", "qemu-xhci",
            "-chardev", "spicevmc,id=ur0,name=usbredir",
            "-device", "usb-redir,chardev=ur0,id=redir0",
            "-spice", f"port={port},addr=127.0.0.1,disable-ticketing=on",
        ]  # fmt: skip
        async with qemu(args) as qmp:
            secs = await redirect_cd_then_detach(f"spice://127.0.0.1:{port}", iso, qmp)
    print(f"QEMU's spice-server: connect_device_async -> attached in {secs * 1e3:.0f} ms")


async def test_usbredir_replug_through_qemu_spice_server() -> None:
    """Issue 16 item 2, as QEMU's spice-server does it: the usb-redir device (and its
    spicevmc chardev with it) goes away under a redirected CD and comes back; spice-gtk
    sees its usbredir channel close, is told of a new one, and redirects again."""
    port = free_port()
    stderr: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(60):
        iso = make_iso(tmp)
        args = [
            "-machine", "pc", "-device", "qemu-xhci",
            "-chardev", "spicevmc,id=ur0,name=usbredir",
            "-device", f"usb-redir,chardev=ur0,id=redir0,debug={REDIR_DEBUG}",
            "-spice", f"port={port},addr=127.0.0.1,disable-ticketing=on",
        ]  # fmt: skip
        backend = {"type": "spicevmc", "data": {"type": "usbredir"}}
        async with qemu(args, stderr=stderr) as qmp:
            t = await replug(f"spice://127.0.0.1:{port}", iso, qmp, backend, cycles=2)
    assert t.close_events == ["closed", "closed"], t.events
    assert_clean_usbredir_log(stderr, sessions=3)  # the first redirect + one per cycle
    print(f"QEMU's spice-server replug: {t.summary()}")
