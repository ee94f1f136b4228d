"""The USB redirection gateway end to end: spice-gtk redirects an emulated USB CD
through `trivmc serve --usbredir tcp:...` into QEMU's `-device usb-redir`."""

from __future__ import annotations

import json
import tempfile

from .test_qemu_reference import wait_usb_speed
from .tools import LineReader, gtk_process, listening_socket, make_iso, qemu, trivmc_serve


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
            assert "1.5 Mb/s" in await qmp.hmp("info usb")
            async with trivmc_serve(
                "--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}"
            ) as uri:
                async with gtk_process("usbredir-cd", uri, iso) as proc:
                    assert proc.stdout is not None and proc.stdin is not None
                    lines = LineReader(proc.stdout)
                    while True:
                        ev = json.loads(await lines.readline())
                        if ev.get("event") in ("connected", "connect-error", "no-shared-cd"):
                            break
                    assert ev == {**ev, "event": "connected", "ok": True}
                    secs = ev["seconds"] + await wait_usb_speed(qmp, "480 Mb/s")
                    print(
                        f"trivmc gateway: connect_device_async -> attached in {secs * 1e3:.0f} ms"
                    )
                    await proc.stdin.send_all(b"disconnect\n")
                    while json.loads(await lines.readline()).get("event") != "disconnected":
                        pass
                    await wait_usb_speed(qmp, "1.5 Mb/s")
