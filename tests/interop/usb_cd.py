"""Scenarios shared by the gateway tests and the reference tests: spice-gtk redirects
an emulated USB CD; QMP shows the usb-redir device attach (480 Mb/s) and detach
(`redirect_cd_then_detach`), or the usb-redir device is unplugged and plugged again
under the redirected CD (`replug`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def usbredir_vm(fd: int, debug: int | None = None) -> list[str]:
    """QEMU arguments of a small VM with an xHCI controller and `-device usb-redir`
    (id redir0) on a socket chardev listening on the inherited socket `fd`."""
    redir = "usb-redir,chardev=ur0,id=redir0" + ("" if debug is None else f",debug={debug}")
    return [
        "-machine", "pc", "-device", "qemu-xhci",
        "-chardev", f"socket,id=ur0,fd={fd},server=on,wait=off",
        "-device", redir,
    ]  # fmt: skip


async def cd_connected(lines: LineReader) -> float:
    """Wait for `gtk_client.py usbredir-cd`'s "connected" line (it must say ok);
    return the seconds spice-gtk took to connect the CD."""
    while True:
        ev = json.loads(await lines.readline())
        if ev.get("event") in ("connected", "connect-error", "no-shared-cd"):
            break
    assert ev == {**ev, "event": "connected", "ok": True}
    return float(ev["seconds"])


async def cd_disconnect(proc: trio.Process, lines: LineReader) -> None:
    """Tell `gtk_client.py usbredir-cd` to disconnect the CD; wait until it did."""
    assert proc.stdin is not None
    await proc.stdin.send_all(b"disconnect\n")
    while json.loads(await lines.readline()).get("event") != "disconnected":
        pass


async def redirect_cd_then_detach(uri: str, iso: str, qmp: Qmp) -> float:
    """Redirect the CD through `uri`, wait until QEMU has it, disconnect it, wait until
    QEMU dropped it. Returns seconds from connect_device_async to attached."""
    assert "1.5 Mb/s" in await qmp.hmp("info usb")
    async with gtk_process("usbredir-cd", uri, iso) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lines = LineReader(proc.stdout)
        secs = await cd_connected(lines) + await wait_usb_speed(qmp, "480 Mb/s")
        await cd_disconnect(proc, lines)
        await wait_usb_speed(qmp, "1.5 Mb/s")
    return secs


# usb-redir's `debug` property for the replug tests: 3 (usbredirparser_info) makes QEMU
# print one "usbredirparser: Peer version: ..." line for each usbredir hello it receives
# and one "usb-redir: attaching ..." line for each device attached, besides the warnings
# and errors it prints by default
REDIR_DEBUG = 3

# spice-gtk's channel-event names that end a channel
CHANNEL_ENDS = ("closed", "error-connect", "error-tls", "error-link", "error-auth", "error-io")


def channel_event(obj: int, names: tuple[str, ...]) -> Callable[[dict[str, Any]], bool]:
    """Accepts spice-gtk's channel-event `names` on usbredir channel object `obj`."""
    return lambda e: e["event"] == "channel-event" and e["obj"] == obj and e["name"] in names


async def wait_usb_gone(qmp: Qmp, timeout: float = 30.0) -> float:
    """Poll QMP `info usb` until redir0 is gone; return the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while "redir0" in await qmp.hmp("info usb"):
            await trio.sleep(0.005)  # poll QMP, as wait_usb_speed does
    return trio.current_time() - start


class GtkEvents:
    """The JSON lines of a running `gtk_client.py usbredir-replug`, read in order."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc = proc
        self.lines = LineReader(proc.stdout)
        self.seen: list[dict[str, Any]] = []

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")

    async def until(
        self,
        want: Callable[[dict[str, Any]], bool],
        what: str,
        fail: Callable[[dict[str, Any]], bool] = lambda ev: False,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """The next event that `want` accepts; an event that `fail` accepts first, or
        none within `timeout`, fails the test with the events seen so far."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    ev: dict[str, Any] = json.loads(await self.lines.readline())
                except EOFError:
                    break
                self.seen.append(ev)
                if fail(ev):
                    raise AssertionError(f"while waiting for {what}: {ev}\n{self.log()}")
                if want(ev):
                    return ev
        raise AssertionError(f"spice-gtk never reported {what}\n{self.log()}")

    def log(self) -> str:
        return "\n".join(json.dumps(ev) for ev in self.seen)


@dataclass
class ReplugTimings:
    """Seconds, measured on CLOCK_MONOTONIC, shared by this process and spice-gtk's."""

    first_attach: float = 0.0  # connect_device_async -> QMP shows the CD at 480 Mb/s
    close_after_del: list[float] = field(default_factory=list)  # device_del -> old closed
    announce_after_add: list[float] = field(default_factory=list)  # device_add -> channel-new
    open_after_add: list[float] = field(default_factory=list)  # device_add -> new opened
    attach_after_redirect: list[float] = field(default_factory=list)  # "redirect" -> 480
    close_events: list[str] = field(default_factory=list)  # how each old channel ended
    events: list[dict[str, Any]] = field(default_factory=list)  # all spice-gtk said

    def summary(self) -> str:
        def ms(xs: list[float]) -> str:
            return ", ".join(f"{x * 1e3:.1f}" for x in xs)

        return (
            f"first attach {self.first_attach * 1e3:.1f} ms; "
            f"channel {'/'.join(self.close_events)} {ms(self.close_after_del)} ms after "
            f"device_del; new channel announced {ms(self.announce_after_add)} ms, opened "
            f"{ms(self.open_after_add)} ms after device_add; attached again "
            f"{ms(self.attach_after_redirect)} ms after redirect"
        )


async def replug(
    uri: str, iso: str, qmp: Qmp, backend: dict[str, Any], cycles: int = 1
) -> ReplugTimings:
    """spice-gtk redirects the CD through `uri`; then, `cycles` times, QEMU's side goes
    away (`device_del redir0`, which deletes chardev ur0 with it) and comes back
    (`chardev-add ur0` with `backend`, `device_add usb-redir`): spice-gtk must see its
    usbredir channel close, a new one announced and opened, and redirecting the CD on it
    must attach it in QEMU again. QEMU's usb-redir device must have been started with
    `debug=REDIR_DEBUG` for `assert_clean_usbredir_log`."""
    t = ReplugTimings()
    assert "1.5 Mb/s" in await qmp.hmp("info usb")
    async with gtk_process("usbredir-replug", uri, iso) as proc:
        ev = GtkEvents(proc)
        try:
            opened = await ev.until(
                lambda e: e["event"] == "channel-event" and e["name"] == "opened",
                "the first usbredir channel opening",
            )
            obj = int(opened["obj"])
            first = await ev.until(
                lambda e: e["event"] in ("connected", "connect-error", "no-shared-cd"),
                "the first redirect's result",
            )
            assert first["event"] == "connected" and first["ok"], ev.log()
            t.first_attach = float(first["seconds"]) + await wait_usb_speed(qmp, "480 Mb/s")
            for cycle in range(cycles):
                # 2: the QEMU side goes away ...
                t_del = time.monotonic()
                await qmp.command("device_del", id="redir0")
                await wait_usb_gone(qmp)
                old = obj
                ended = await ev.until(
                    channel_event(old, CHANNEL_ENDS),
                    f"cycle {cycle}: usbredir channel {old} ending after device_del",
                )
                t.close_after_del.append(float(ended["t"]) - t_del)
                t.close_events.append(str(ended["name"]))
                # ... and comes back
                await qmp.command("chardev-add", id="ur0", backend=backend)
                t_add = time.monotonic()
                await qmp.command(
                    "device_add", driver="usb-redir", chardev="ur0", id="redir0", debug=REDIR_DEBUG
                )
                # 3: spice-gtk is told of the new channel and opens it
                new = await ev.until(
                    lambda e: e["event"] == "channel-new",
                    f"cycle {cycle}: a new usbredir channel after device_add",
                )
                obj = int(new["obj"])
                assert obj > old, ev.log()
                t.announce_after_add.append(float(new["t"]) - t_add)
                opened = await ev.until(
                    channel_event(obj, ("opened",)),
                    f"cycle {cycle}: the new usbredir channel {obj} opening",
                    fail=channel_event(obj, CHANNEL_ENDS),
                )
                t.open_after_add.append(float(opened["t"]) - t_add)
                # 4: redirecting again attaches the device in QEMU
                t_redirect = time.monotonic()
                await ev.send("redirect")
                asked = await ev.until(
                    lambda e: e["event"] == "redirect", f"cycle {cycle}: the redirect"
                )
                # spice-gtk let go of the CD when its channel closed, as with spice-server
                assert not asked["was_connected"], ev.log()
                done = await ev.until(
                    lambda e: e["event"] in ("connected", "connect-error"),
                    f"cycle {cycle}: the redirect's result",
                )
                assert done["event"] == "connected" and done["ok"], ev.log()
                await wait_usb_speed(qmp, "480 Mb/s")
                t.attach_after_redirect.append(time.monotonic() - t_redirect)
            await ev.send("quit")
            with trio.fail_after(10):
                await proc.wait()
        finally:
            t.events = ev.seen
    return t


def usbredir_trouble(qemu_stderr: list[str]) -> list[str]:
    """QEMU's stderr lines that say its usb-redir parser choked on what it was sent
    (bytes from another session, say: `usbredirparser: error invalid usb-redir packet
    type`, or an assertion failure that aborts QEMU)."""
    signs = ("error", "assert", "abort", "warning")
    return [
        ln
        for ln in qemu_stderr
        # QEMU's usb-redir device and its parser; not spice-server's own channel log
        # ("Spice: usbredir:0 ...: Connection reset by peer" when a client goes)
        if ("usbredirparser" in ln or "usb-redir" in ln or "redirect.c" in ln)
        and any(s in ln.lower() for s in signs)
    ]


def assert_clean_usbredir_log(qemu_stderr: list[str], sessions: int) -> None:
    """QEMU's usb-redir parser met nothing but `sessions` clean usbredir sessions from
    spice-gtk: no error, warning or assertion; one hello each from spice-gtk (a second
    hello, or none, on one of QEMU's connections would be another session's bytes) and
    one device attached each."""
    text = "".join(qemu_stderr)
    trouble = usbredir_trouble(qemu_stderr)
    assert not trouble, f"{''.join(trouble)}--- all of QEMU's stderr:\n{text}"
    hellos = [ln for ln in qemu_stderr if "usbredirparser: Peer version:" in ln]
    assert len(hellos) == sessions, text
    assert all("Peer version: spice-gtk" in ln for ln in hellos), text
    assert sum("usb-redir: attaching" in ln for ln in qemu_stderr) == sessions, text
