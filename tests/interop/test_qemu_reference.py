"""The reference behaviour: spice-gtk redirects an emulated USB CD through QEMU's own
spice-server (`-chardev spicevmc,name=usbredir`). trivmc's gateway must match it."""

from __future__ import annotations

import tempfile

from .tools import free_port, make_iso, qemu
from .usb_cd import redirect_cd_then_detach


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
