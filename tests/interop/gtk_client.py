#!/usr/bin/python3
"""Drive the real spice-gtk client (SpiceClientGLib via python3-gi) for interop tests.

Run with Debian's ``/usr/bin/python3`` (a virtualenv has no ``gi``). Every scenario
prints exactly one JSON object on its last stdout line and exits 0 when it ran to its
end (the JSON says what was seen; the pytest side asserts on it), 2 on a timeout.

With --ca-file, TLS channels (the URI's tls-port) are verified against that CA.

Scenarios:
  port-echo URI NAME NBYTES      link main + port NAME, send NBYTES random bytes,
                                 read them back, compare digests.
  port-echo2 URI NAME NBYTES     as port-echo, then link a second channel object on the
                                 same port: report how it ends; then echo again.
  auth URI                       link main only; report whether it linked or which
                                 error event it saw (use --password).
  usbredir URI                   link main + usbredir 0; report channel state and caps.
  names URI                      link main; once the first channel list arrived (MAIN_NAME
                                 and MAIN_UUID come before it), report the session's
                                 "name" and "uuid" properties.
  usbredir-cd URI ISO            redirect an emulated USB CD built from ISO; print a
                                 JSON line "connected" then wait for a "disconnect" line
                                 on stdin, disconnect, print "disconnected", exit.
  usbredir-replug URI ISO        follow the usbredir channel through its QEMU side going
                                 away and coming back: print one JSON line (with a
                                 monotonic "t") for every usbredir channel-new/-destroy,
                                 channel-event, USB manager signal and connect result;
                                 redirect the CD when the first usbredir channel opens;
                                 then obey stdin lines: "redirect" (connect the CD again,
                                 on the channel spice-gtk picks: the newest open one;
                                 if spice-gtk still holds the CD, disconnect it first and,
                                 as it then drops the shared CD, connect a new one),
                                 "state" (print what the manager and session hold),
                                 "quit".
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import sys
import time
import uuid
from typing import Any

import gi

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # noqa: E402

CHUNK = 64 * 1024
LZ4_CAP = 0  # SPICE_SPICEVMC_CAP_DATA_COMPRESS_LZ4


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Runner:
    def __init__(
        self, uri: str, password: str | None, timeout: float, ca_file: str | None, usbredir: bool
    ) -> None:
        self.loop = GLib.MainLoop()
        self.result: dict[str, Any] = {"events": []}
        self.session = SpiceClientGLib.Session()
        self.session.set_property("uri", uri)
        if ca_file is not None:
            self.session.set_property("ca-file", ca_file)
        if password is not None:
            self.session.set_property("password", password)
        self.session.set_property("enable-usbredir", usbredir)
        self.timed_out = False
        GLib.timeout_add(int(timeout * 1000), self._timeout)
        self.main: Any = None

    def _timeout(self) -> bool:
        self.timed_out = True
        self.result["timeout"] = True
        self.loop.quit()
        return False

    def finish(self) -> None:
        self.loop.quit()

    def run(self) -> int:
        self.session.connect()
        self.loop.run()
        with contextlib.suppress(Exception):
            self.session.disconnect()
        out(self.result)
        return 2 if self.timed_out else 0

    def event_name(self, event: Any) -> str:
        return str(event.value_nick)


def scenario_port_echo(args: argparse.Namespace, second: bool) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=False)
    payload = os.urandom(args.nbytes)
    r.result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    received = bytearray()
    state: dict[str, Any] = {"port": None, "sent": 0, "t0": 0.0, "second": None, "round": 1}
    keep: list[bytes] = []  # write_async keeps using the caller's buffer: keep it alive

    def send_next(port: Any) -> None:
        off = state["sent"]
        if off >= len(payload):
            return
        chunk = payload[off : off + CHUNK]
        state["sent"] = off + len(chunk)
        keep.append(chunk)
        port.write_async(chunk, None, on_written, chunk)

    def on_written(port: Any, res: Any, chunk: bytes) -> None:
        port.write_finish(res)
        keep.remove(chunk)
        send_next(port)

    def start_echo(port: Any) -> None:
        received.clear()
        state["sent"] = 0
        state["t0"] = time.monotonic()
        send_next(port)

    def on_data(port: Any, ptr: int, size: int) -> None:
        received.extend(ctypes.string_at(ptr, size))
        if len(received) >= len(payload):
            secs = time.monotonic() - state["t0"]
            key = "recv_sha256" if state["round"] == 1 else "recv2_sha256"
            r.result[key] = hashlib.sha256(bytes(received[: len(payload)])).hexdigest()
            r.result["seconds" if state["round"] == 1 else "seconds2"] = secs
            if second and state["round"] == 1:
                open_second()
            else:
                r.finish()

    def open_second() -> None:
        ch = SpiceClientGLib.Channel.new(r.session, 10, 0)
        state["second"] = ch
        r.result["second_events"] = []

        def on_ev(c: Any, ev: Any) -> None:
            r.result["second_events"].append(r.event_name(ev))
            if ev in (
                SpiceClientGLib.ChannelEvent.CLOSED,
                SpiceClientGLib.ChannelEvent.ERROR_IO,
                SpiceClientGLib.ChannelEvent.ERROR_LINK,
            ):
                state["round"] = 2
                start_echo(state["port"])

        GObject.Object.connect(ch, "channel-event", on_ev)
        ch.connect()

    def on_opened(port: Any, _pspec: Any) -> None:
        opened = bool(port.get_property("port-opened"))
        r.result.setdefault("opened_history", []).append(opened)
        if opened and not r.result.get("started"):
            r.result["started"] = True
            r.result["port_name"] = port.get_property("port-name")
            start_echo(port)

    def on_port_event(port: Any, event: int) -> None:
        r.result.setdefault("port_events", []).append(int(event))

    def on_channel_new(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.MainChannel):
            r.main = ch
            GObject.Object.connect(
                ch, "channel-event", lambda c, ev: r.result["events"].append(r.event_name(ev))
            )
        elif isinstance(ch, SpiceClientGLib.PortChannel) and state["port"] is None:
            state["port"] = ch
            GObject.Object.connect(ch, "notify::port-opened", on_opened)
            GObject.Object.connect(ch, "port-data", on_data)
            GObject.Object.connect(ch, "port-event", on_port_event)
            GObject.Object.connect(
                ch,
                "channel-event",
                lambda c, ev: r.result.setdefault("port_channel_events", []).append(
                    r.event_name(ev)
                ),
            )
            ch.connect()

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    return r.run()


def scenario_auth(args: argparse.Namespace) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=False)

    def on_ev(_c: Any, ev: Any) -> None:
        name = r.event_name(ev)
        r.result["events"].append(name)
        r.result["outcome"] = name
        r.finish()

    def on_channel_new(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.MainChannel):
            GObject.Object.connect(ch, "channel-event", on_ev)

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    return r.run()


def scenario_names(args: argparse.Namespace) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=False)
    r.result["notified"] = []

    def report() -> bool:
        name = r.session.get_property("name")
        r.result["name"] = None if name is None else str(name)
        # "uuid" is a pointer to the session's 16 bytes (zero until MAIN_UUID)
        raw = ctypes.string_at(int(r.session.get_property("uuid")), 16)
        r.result["uuid"] = str(uuid.UUID(bytes=raw))
        r.finish()
        return False

    def on_channel_new(_s: Any, ch: Any) -> None:
        if not isinstance(ch, SpiceClientGLib.MainChannel) and "name" not in r.result:
            GLib.idle_add(report)  # a VMC channel: the CHANNELS_LIST was handled

    def on_notify(_s: Any, pspec: Any) -> None:
        r.result["notified"].append(pspec.name)

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    GObject.Object.connect(r.session, "notify::name", on_notify)
    GObject.Object.connect(r.session, "notify::uuid", on_notify)
    return r.run()


def scenario_usbredir(args: argparse.Namespace) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=True)

    def on_channel_new(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.UsbredirChannel):

            def on_ev(c: Any, ev: Any) -> None:
                name = r.event_name(ev)
                r.result["events"].append(name)
                if name == "opened":
                    r.result["server_lz4"] = bool(c.test_capability(LZ4_CAP))
                    r.result["channel_id"] = int(c.get_property("channel-id"))
                    r.finish()
                elif name != "none":
                    r.finish()

            GObject.Object.connect(ch, "channel-event", on_ev)

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    # as remote-viewer does: the USB device manager connects the usbredir channels
    r.result["usb_manager"] = SpiceClientGLib.UsbDeviceManager.get(r.session) is not None
    return r.run()


def scenario_usbredir_cd(args: argparse.Namespace) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=True)
    state: dict[str, Any] = {"mgr": None, "dev": None, "t0": 0.0}

    def on_disconnected(mgr: Any, res: Any, _data: Any) -> None:
        try:
            mgr.disconnect_device_finish(res)
            out({"event": "disconnected"})
        except GLib.Error as e:
            out({"event": "disconnect-error", "message": e.message})
        r.result["disconnected"] = True
        r.finish()

    def on_stdin(_fd: Any, _cond: Any) -> bool:
        line = sys.stdin.readline()
        if not line or line.strip() == "disconnect":
            state["mgr"].disconnect_device_async(state["dev"], None, on_disconnected, None)
            return False
        return True

    def on_connected(mgr: Any, res: Any, _data: Any) -> None:
        try:
            ok = mgr.connect_device_finish(res)
        except GLib.Error as e:
            r.result["connect_error"] = e.message
            out({"event": "connect-error", "message": e.message})
            r.finish()
            return
        secs = time.monotonic() - state["t0"]
        r.result["connected"] = bool(ok)
        r.result["connect_seconds"] = secs
        out({"event": "connected", "ok": bool(ok), "seconds": secs})
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)

    def on_device_added(mgr: Any, dev: Any) -> None:
        if state["dev"] is not None or not mgr.is_device_shared_cd(dev):
            return
        state["dev"] = dev
        out({"event": "device-added", "description": dev.get_description("%s %s")})

    def on_usbredir_event(c: Any, ev: Any) -> None:
        name = r.event_name(ev)
        r.result["events"].append(name)
        if name == "opened" and state["dev"] is not None and not state["t0"]:
            state["t0"] = time.monotonic()
            state["mgr"].connect_device_async(state["dev"], None, on_connected, None)
        elif name not in ("opened", "none"):
            r.finish()

    def on_channel_new(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.UsbredirChannel):
            GObject.Object.connect(ch, "channel-event", on_usbredir_event)

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    mgr = SpiceClientGLib.UsbDeviceManager.get(r.session)
    state["mgr"] = mgr
    GObject.Object.connect(mgr, "device-added", on_device_added)
    ok = mgr.create_shared_cd_device(args.iso)
    if not ok:
        out({"event": "no-shared-cd"})
    return r.run()


def scenario_usbredir_replug(args: argparse.Namespace) -> int:
    r = Runner(args.uri, args.password, args.timeout, args.ca_file, usbredir=True)
    mgr = SpiceClientGLib.UsbDeviceManager.get(r.session)
    # every usbredir channel object spice-gtk makes gets a serial number: "obj"
    chans: dict[int, Any] = {}
    state: dict[str, Any] = {"dev": None, "redirects": 0, "reported": False}

    def emit(event: str, **fields: Any) -> None:
        out({"event": event, "t": time.monotonic(), **fields})

    def obj_of(ch: Any) -> int:
        for n, c in chans.items():
            if c is ch:
                return n
        return -1

    def connected_now() -> bool:
        dev = state["dev"]
        return dev is not None and bool(mgr.is_device_connected(dev))

    def report_device_state() -> bool:
        now = connected_now()
        if now != state["reported"]:
            state["reported"] = now
            emit("device-state", connected=now)
        return False

    def redirect(why: str) -> None:
        dev = state["dev"]
        if dev is None:
            emit("redirect-skipped", why=why, reason="no shared CD yet")
            return
        state["redirects"] += 1
        n = state["redirects"]
        was = connected_now()
        emit("redirect", why=why, n=n, was_connected=was)
        t0 = time.monotonic()

        def done(m: Any, res: Any, _data: Any) -> None:
            try:
                ok = bool(m.connect_device_finish(res))
            except GLib.Error as e:
                emit("connect-error", n=n, message=e.message, connected=connected_now())
                return
            emit("connected", n=n, ok=ok, seconds=time.monotonic() - t0)
            report_device_state()

        def released(m: Any, res: Any, _data: Any) -> None:
            try:
                m.disconnect_device_finish(res)
                emit("disconnected", n=n)
            except GLib.Error as e:
                emit("disconnect-error", n=n, message=e.message)
            if any(d is dev for d in mgr.get_devices()):
                mgr.connect_device_async(dev, None, done, None)
                return
            # spice-gtk drops a shared CD once disconnected: make it anew, connect that
            state["dev"] = None
            state["on_new_cd"] = lambda new: mgr.connect_device_async(new, None, done, None)
            if not mgr.create_shared_cd_device(args.iso):
                emit("no-shared-cd", n=n)

        if was:
            # spice-gtk still holds the device on a channel that is gone: release it first
            mgr.disconnect_device_async(dev, None, released, None)
        else:
            mgr.connect_device_async(dev, None, done, None)

    def on_stdin(_fd: Any, _cond: Any) -> bool:
        line = sys.stdin.readline()
        cmd = line.strip()
        if not line or cmd == "quit":
            r.finish()
            return False
        if cmd == "redirect":
            redirect("stdin")
        elif cmd == "state":
            live = [
                {"obj": obj_of(c), "channel_id": int(c.get_property("channel-id"))}
                for c in r.session.get_channels()
                if isinstance(c, SpiceClientGLib.UsbredirChannel)
            ]
            emit(
                "state",
                connected=connected_now(),
                free_channels=int(mgr.get_property("free-channels")),
                session_usbredir=live,
            )
        else:
            emit("unknown-command", line=cmd)
        return True

    def on_event(ch: Any, ev: Any) -> None:
        name = r.event_name(ev)
        emit("channel-event", obj=obj_of(ch), name=name, connected=connected_now())
        GLib.idle_add(report_device_state)  # the manager reacts after this handler
        if name == "opened" and state["redirects"] == 0:
            redirect("first-open")

    def on_channel_new(_s: Any, ch: Any) -> None:
        if not isinstance(ch, SpiceClientGLib.UsbredirChannel):
            return
        n = len(chans) + 1
        chans[n] = ch
        GObject.Object.connect(ch, "channel-event", on_event)
        emit("channel-new", obj=n, channel_id=int(ch.get_property("channel-id")))

    def on_channel_destroy(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.UsbredirChannel):
            emit("channel-destroy", obj=obj_of(ch), connected=connected_now())

    def on_device_added(m: Any, dev: Any) -> None:
        shared = bool(m.is_device_shared_cd(dev))
        emit("device-added", shared_cd=shared, description=dev.get_description("%s %s"))
        if shared and state["dev"] is None:
            state["dev"] = dev
            then = state.pop("on_new_cd", None)
            if then is not None:
                then(dev)

    def on_device_removed(_m: Any, dev: Any) -> None:
        emit("device-removed", ours=dev is state["dev"], description=dev.get_description("%s %s"))

    def on_auto_connect_failed(_m: Any, _dev: Any, err: Any) -> None:
        emit("auto-connect-failed", message=err.message)

    def on_device_error(_m: Any, _dev: Any, err: Any) -> None:
        emit("device-error", message=err.message, connected=connected_now())

    GObject.Object.connect(r.session, "channel-new", on_channel_new)
    GObject.Object.connect(r.session, "channel-destroy", on_channel_destroy)
    GObject.Object.connect(mgr, "device-added", on_device_added)
    GObject.Object.connect(mgr, "device-removed", on_device_removed)
    GObject.Object.connect(mgr, "auto-connect-failed", on_auto_connect_failed)
    GObject.Object.connect(mgr, "device-error", on_device_error)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
    emit("start", auto_connect=bool(mgr.get_property("auto-connect")))
    if not mgr.create_shared_cd_device(args.iso):
        emit("no-shared-cd")
    return r.run()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--password", default=None)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ca-file", default=None, help="CA certificate for TLS channels")
    sub = p.add_subparsers(dest="scenario", required=True)
    for name in ("port-echo", "port-echo2"):
        s = sub.add_parser(name)
        s.add_argument("uri")
        s.add_argument("name")
        s.add_argument("nbytes", type=int)
    s = sub.add_parser("auth")
    s.add_argument("uri")
    s = sub.add_parser("usbredir")
    s.add_argument("uri")
    for name in ("usbredir-cd", "usbredir-replug"):
        s = sub.add_parser(name)
        s.add_argument("uri")
        s.add_argument("iso")
    s = sub.add_parser("names")
    s.add_argument("uri")
    args = p.parse_args()
    if args.scenario == "port-echo":
        return scenario_port_echo(args, second=False)
    if args.scenario == "port-echo2":
        return scenario_port_echo(args, second=True)
    if args.scenario == "auth":
        return scenario_auth(args)
    if args.scenario == "usbredir":
        return scenario_usbredir(args)
    if args.scenario == "usbredir-replug":
        return scenario_usbredir_replug(args)
    if args.scenario == "names":
        return scenario_names(args)
    return scenario_usbredir_cd(args)


if __name__ == "__main__":
    sys.exit(main())
