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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trivmc.server.adoption import listen_for_handover

from ..server.test_handover_failure import a_dying_new_server, dies_after_ready
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


@dataclass
class Rig:
    """QEMU with `-device usb-redir` connected to `trivmc serve` A, and spice-gtk
    linked to A with the emulated CD redirected and attached (480 Mb/s)."""

    tmp: str
    qmp: Qmp
    gtk: trio.Process
    lines: LineReader
    a_ctl: str
    common: tuple[str, ...]
    log_a: list[str] = field(default_factory=list)
    procs: list[trio.Process] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)  # QEMU's

    async def detach_cd(self) -> None:
        """spice-gtk detaches the CD, through whichever server it is linked to now."""
        await cd_disconnect(self.gtk, self.lines)
        await wait_usb_speed(self.qmp, "1.5 Mb/s")


@asynccontextmanager
async def cd_through_a() -> AsyncIterator[Rig]:
    redir = listening_socket()
    port = redir.getsockname()[1]
    log_a: list[str] = []
    procs: list[trio.Process] = []
    stderr: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(120):
        iso = make_iso(tmp)
        args = usbredir_vm(redir.fileno(), debug=REDIR_DEBUG)
        common = ("--disable-ticketing", "--usbredir", f"tcp:127.0.0.1:{port}")
        async with qemu(args, pass_fds=[redir.fileno()], stderr=stderr) as qmp:
            redir.close()
            a_ctl = f"{tmp}/a.ctl"
            async with (
                trivmc_serve(*common, "--control", f"unix:{a_ctl}", log=log_a, procs=procs) as uri,
                gtk_process("usbredir-cd", uri, iso) as gtk,
            ):
                assert gtk.stdout is not None
                lines = LineReader(gtk.stdout)
                await cd_connected(lines)
                await wait_usb_speed(qmp, "480 Mb/s")
                yield Rig(tmp, qmp, gtk, lines, a_ctl, common, log_a, procs, stderr)
    # QEMU's usb-redir got one hello (one connection) for the whole run
    hellos = [line for line in stderr if "Peer version" in line]
    assert len(hellos) == 1, "".join(stderr)


async def test_handover_keeps_the_redirected_cd_attached() -> None:
    async with cd_through_a() as rig:
        log_b: list[str] = []
        b_path, b_ctl = f"{rig.tmp}/b.handover", f"{rig.tmp}/b.ctl"
        b_args = (*rig.common, "--await-handover", b_path, "--control", f"unix:{b_ctl}")
        async with trivmc_serve(*b_args, log=log_b, announce=r"awaiting a handover at (\S+)"):
            watch = UsbWatch(rig.qmp)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch.run, stop)
                t0 = time.monotonic()
                try:
                    result = await ctl(rig.a_ctl, "handover", f"to={b_path}")
                finally:
                    print("A:", "".join(rig.log_a[-30:]))
                    print("B:", "".join(log_b[-30:]))
                took = time.monotonic() - t0
                with trio.fail_after(10):
                    await rig.procs[0].wait()  # A ends by itself
                sessions = await ctl(f"unix:{b_ctl}", "query-sessions")
                stop.set()
            print(f"handover: {took * 1e3:.0f} ms, {result}, {watch.samples} QMP samples")
            assert rig.procs[0].returncode == 0
            assert result["peers"] == 1
            assert list(result["outcomes"].values()) == ["seamless"]
            assert watch.samples > 0 and watch.missing == []
            assert sessions, "spice-gtk is not linked to B"
            await rig.detach_cd()  # spice-gtk still drives the device, through B


async def test_a_failed_handover_keeps_the_cd_on_the_old_server() -> None:
    async with cd_through_a() as rig:
        b_path = f"{rig.tmp}/b.handover"
        watch = UsbWatch(rig.qmp)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            sock = await listen_for_handover(b_path)
            nursery.start_soon(a_dying_new_server, sock, dies_after_ready)
            nursery.start_soon(watch.run, stop)
            try:
                error = await ctl(rig.a_ctl, "handover", f"to={b_path}", ok=False)
                # spice-gtk's link to its destination reaches A and is refused
                with trio.fail_after(30):
                    while not any("BAD_CONNECTION_ID" in line for line in rig.log_a):
                        await trio.sleep(0.05)
                sessions = await ctl(f"unix:{rig.a_ctl}", "query-sessions")
            finally:
                print("A:", "".join(rig.log_a[-30:]))
            stop.set()
        print(f"failed handover: {error.strip()}; {watch.samples} QMP samples")
        assert "goes on serving" in error
        assert rig.procs[0].returncode is None  # A still runs
        assert watch.samples > 0 and watch.missing == []
        assert sessions and sessions[0]["channels"], "spice-gtk left A"
        await rig.detach_cd()  # through A
