"""The USB redirection gateway end to end: spice-gtk redirects an emulated USB CD
through `trivmc serve --usbredir tcp:...` into QEMU's `-device usb-redir`."""

from __future__ import annotations

import tempfile

import trio

from .tools import listening_socket, make_iso, qemu, trivmc_serve
from .usb_cd import (
    REDIR_DEBUG,
    assert_clean_usbredir_log,
    redirect_cd_then_detach,
    replug,
    usbredir_vm,
)


async def test_usb_cd_through_trivmc_gateway() -> None:
    redir = listening_socket()  # QEMU's usb-redir chardev listens on this socket
    port = redir.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        iso = make_iso(tmp)
        args = usbredir_vm(redir.fileno())
        async with qemu(args, pass_fds=[redir.fileno()]) as qmp:
            redir.close()
            serve = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
            async with trivmc_serve(*serve) as uri:
                secs = await redirect_cd_then_detach(uri, iso, qmp)
    print(f"trivmc gateway: connect_device_async -> attached in {secs * 1e3:.0f} ms")


async def test_usbredir_replug_through_trivmc_gateway() -> None:
    """Issue 16 item 2 through the gateway, as test_usbredir_replug_through_qemu_spice_server
    does it through QEMU's spice-server: the usb-redir device (and its socket chardev, and
    the chardev's listening socket with it) goes away under a redirected CD and comes back
    listening on the same port. trivmc must close the client's usbredir channel, announce
    the channel again once it can reach QEMU, and never hand QEMU's new connection bytes
    of the old session (QEMU's parser would complain on stderr, or abort)."""
    # SO_REUSEADDR, inherited by the connection QEMU accepts on it: QEMU closes that
    # connection first at device_del, and its TIME_WAIT must not keep QEMU's own new
    # listener (it sets SO_REUSEADDR too) off the port
    redir = listening_socket(reuse_addr=True)
    port = redir.getsockname()[1]
    stderr: list[str] = []
    log: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(60):
        iso = make_iso(tmp)
        args = usbredir_vm(redir.fileno(), debug=REDIR_DEBUG)
        backend = {
            "type": "socket",
            "data": {
                "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                "server": True,
                "wait": False,
            },
        }
        async with qemu(args, pass_fds=[redir.fileno()], stderr=stderr) as qmp:
            redir.close()
            serve = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
            async with trivmc_serve(*serve, log=log) as uri:
                try:
                    t = await replug(uri, iso, qmp, backend, cycles=2)
                finally:
                    print("".join(log[-40:]))
                    print("QEMU stderr:", "".join(stderr[-40:]))
            assert "redir0" in await qmp.hmp("info usb"), "QEMU is gone"
    assert t.close_events == ["closed", "closed"], t.events
    assert_clean_usbredir_log(stderr, sessions=3)  # the first redirect + one per cycle
    print(f"trivmc gateway replug: {t.summary()}")
