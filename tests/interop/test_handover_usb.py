"""Issue 17 item 3 end to end: spice-gtk has an emulated USB CD redirected into QEMU's
`-device usb-redir` through `trivmc serve` A; `trivmc ctl A handover to=B` moves
everything to a second `trivmc serve --await-handover B`. QMP is polled throughout:
the CD never leaves the VM (no sample without redir0 at 480 Mb/s); QEMU's usb-redir
socket never closes (QEMU would detach the device); A exits; spice-gtk, now linked to
B, still controls the device: its disconnect reaches QEMU through B.

And the same with a B that dies right after it took the hello: the command fails, A
goes on serving, spice-gtk's link to its destination (A's own address) is refused and
it stays on A; the CD never leaves the VM and spice-gtk still controls it through A."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

import trio
import trio.testing

from trivmc.server.adoption import listen_for_handover
from trivmc.transport import fdpass

from .tools import LineReader, Qmp, gtk_process, listening_socket, make_iso, qemu, trivmc_serve
from .usb_cd import REDIR_DEBUG, cd_connected, cd_disconnect, usbredir_vm, wait_usb_speed


class UsbWatch:
    """Polls QMP `info usb` until stopped; counts the samples where the CD was not
    attached at 480 Mb/s."""

    def __init__(self, qmp: Qmp) -> None:
        self.qmp = qmp
        self.samples = 0
        self.missing: list[str] = []

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            info = await self.qmp.hmp("info usb")
            self.samples += 1
            if "redir0" not in info or "480 Mb/s" not in info:
                self.missing.append(info)
            await trio.sleep(0.002)  # poll QMP: QEMU emits no event for a USB detach


async def ctl(target: str, *args: str, ok: bool = True) -> Any:
    """`trivmc ctl TARGET ARGS`: the command's result (with `ok`), else its stderr."""
    cmd = [sys.executable, "-m", "trivmc", "ctl", target, *args]
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if not ok:
        assert proc.returncode != 0, proc.stdout.decode()
        return proc.stderr.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


async def dying_new_server(path: str) -> None:
    """Take the old server's hello at `path`, answer `ready`, and die."""
    sock = await listen_for_handover(path)
    conn, _ = await sock.accept()
    sock.close()
    fd = fdpass.FdChannel(conn)
    try:
        msg, socks = await fd.receive()
        assert msg["t"] == "hello"
        for s in socks:
            s.close()
        await fd.send({"t": "ready"})
    finally:
        fd.close()


async def test_handover_keeps_the_redirected_cd_attached() -> None:
    redir = listening_socket()
    port = redir.getsockname()[1]
    log_a: list[str] = []
    log_b: list[str] = []
    stderr: list[str] = []
    procs: list[trio.Process] = []
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(120):
        iso = make_iso(tmp)
        args = usbredir_vm(redir.fileno(), debug=REDIR_DEBUG)
        common = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
        async with qemu(args, pass_fds=[redir.fileno()], stderr=stderr) as qmp:
            redir.close()
            a_ctl, b_path, b_ctl = f"{tmp}/a.ctl", f"{tmp}/b.handover", f"{tmp}/b.ctl"
            async with (
                trivmc_serve(*common, "--control", f"unix:{a_ctl}", log=log_a, procs=procs) as uri,
                gtk_process("usbredir-cd", uri, iso) as gtk,
            ):
                assert gtk.stdout is not None
                lines = LineReader(gtk.stdout)
                await cd_connected(lines)
                await wait_usb_speed(qmp, "480 Mb/s")

                b_args = (*common, "--await-handover", b_path, "--control", f"unix:{b_ctl}")
                async with trivmc_serve(
                    *b_args, log=log_b, announce=r"awaiting a handover at (\S+)"
                ):
                    watch = UsbWatch(qmp)
                    stop = trio.Event()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch.run, stop)
                        t0 = time.monotonic()
                        try:
                            reply = await ctl(a_ctl, "handover", f"to={b_path}")
                        finally:
                            print("A:", "".join(log_a[-30:]))
                            print("B:", "".join(log_b[-30:]))
                        took = time.monotonic() - t0
                        with trio.fail_after(10):
                            await procs[0].wait()  # A ends by itself
                        sessions = await ctl(f"unix:{b_ctl}", "query-sessions")
                        stop.set()
                    result = reply
                    print(f"handover: {took * 1e3:.0f} ms, {result}, {watch.samples} QMP samples")
                    assert procs[0].returncode == 0
                    assert result["peers"] == 1
                    assert list(result["outcomes"].values()) == ["seamless"]
                    assert watch.samples > 0 and watch.missing == []
                    assert sessions, "spice-gtk is not linked to B"
                    # spice-gtk still drives the device, now through B
                    await cd_disconnect(gtk, lines)
                    await wait_usb_speed(qmp, "1.5 Mb/s")
    # QEMU's usb-redir got one hello (one connection) for the whole run
    hellos = [line for line in stderr if "Peer version" in line]
    assert len(hellos) == 1, "".join(stderr)


async def test_a_failed_handover_keeps_the_cd_on_the_old_server() -> None:
    redir = listening_socket()
    port = redir.getsockname()[1]
    log_a: list[str] = []
    stderr: list[str] = []
    procs: list[trio.Process] = []
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(120):
        iso = make_iso(tmp)
        args = usbredir_vm(redir.fileno(), debug=REDIR_DEBUG)
        common = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
        async with qemu(args, pass_fds=[redir.fileno()], stderr=stderr) as qmp:
            redir.close()
            a_ctl, b_path = f"{tmp}/a.ctl", f"{tmp}/b.handover"
            async with (
                trivmc_serve(*common, "--control", f"unix:{a_ctl}", log=log_a, procs=procs) as uri,
                gtk_process("usbredir-cd", uri, iso) as gtk,
            ):
                assert gtk.stdout is not None
                lines = LineReader(gtk.stdout)
                await cd_connected(lines)
                await wait_usb_speed(qmp, "480 Mb/s")
                watch = UsbWatch(qmp)
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dying_new_server, b_path)
                    await trio.testing.wait_all_tasks_blocked()  # (listening at b_path)
                    nursery.start_soon(watch.run, stop)
                    try:
                        error = await ctl(a_ctl, "handover", f"to={b_path}", ok=False)
                        # spice-gtk's link to its destination reaches A and is refused
                        with trio.fail_after(30):
                            while not any("BAD_CONNECTION_ID" in line for line in log_a):
                                await trio.sleep(0.05)
                        sessions = await ctl(f"unix:{a_ctl}", "query-sessions")
                    finally:
                        print("A:", "".join(log_a[-30:]))
                    stop.set()
                print(f"failed handover: {error.strip()}; {watch.samples} QMP samples")
                assert "goes on serving" in error
                assert procs[0].returncode is None  # A still runs
                assert watch.samples > 0 and watch.missing == []
                assert sessions and sessions[0]["channels"], "spice-gtk left A"
                # spice-gtk still drives the device through A
                await cd_disconnect(gtk, lines)
                await wait_usb_speed(qmp, "1.5 Mb/s")
    hellos = [line for line in stderr if "Peer version" in line]
    assert len(hellos) == 1, "".join(stderr)
