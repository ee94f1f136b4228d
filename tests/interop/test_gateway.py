"""The USB redirection gateway end to end: spice-gtk redirects an emulated USB CD
through `trivmc serve --usbredir tcp:...` into QEMU's `-device usb-redir`."""

from __future__ import annotations

import tempfile

from .tools import listening_socket, make_iso, qemu, trivmc_serve
from .usb_cd import redirect_cd_then_detach


async def test_usb_cd_through_trivmc_gateway() -> None:
    redir = listening_socket()  # QEMU's usb-redir chardev listens on this socket
    port = redir.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        iso = make_iso(tmp)
        args = [
            "-machine", "pc", "-device", "qemu-xhci",
            "-chardev", f"socket,id=ur0,fd={redir.fileno()},server=on,wait=off",
            "-device", "usb-redir,chardev=ur0,id=redir0",
        ]  # fmt: skip
        async with qemu(args, pass_fds=[redir.fileno()]) as qmp:
            redir.close()
            serve = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
            async with trivmc_serve(*serve) as uri:
                secs = await redirect_cd_then_detach(uri, iso, qmp)
    print(f"trivmc gateway: connect_device_async -> attached in {secs * 1e3:.0f} ms")
