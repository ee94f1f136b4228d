#!/usr/bin/python3
"""spice-gtk (SpiceClientGLib via python3-gi) linked to a port, driven over stdin while
its server migrates it: run with Debian's ``/usr/bin/python3``.

    gtk_migrate.py [--timeout S] URI NAME

Prints one JSON object per line: {"event": "opened", "port_name"} when the port opens;
{"event": "migration-state", "state"} on every change of the session's
migration-state; {"event": "channel-event", "channel", "name"} for main and the port;
{"event": "echoed", "n", "ok"} after each echo. Stdin lines: "echo N" (send N random
bytes through the port, wait until N bytes came back, compare them), "quit". Exits 0
after "quit", 2 on the timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from typing import Any

import gi

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # noqa: E402

CHUNK = 16 * 1024


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("uri")
    p.add_argument("name")
    args = p.parse_args()
    loop = GLib.MainLoop()
    session = SpiceClientGLib.Session()
    session.set_property("uri", args.uri)
    session.set_property("enable-usbredir", False)
    state: dict[str, Any] = {"port": None, "expect": b"", "got": bytearray(), "timeout": False}
    keep: list[bytes] = []  # write_async uses the caller's buffer: keep it alive

    def on_timeout() -> bool:
        state["timeout"] = True
        emit("timeout")
        loop.quit()
        return False

    def on_written(port: Any, res: Any, chunk: bytes) -> None:
        port.write_finish(res)
        keep.remove(chunk)

    def echo(n: int) -> None:
        payload = os.urandom(n)
        state["expect"] = payload
        state["got"] = bytearray()
        port = state["port"]
        for off in range(0, n, CHUNK):
            chunk = payload[off : off + CHUNK]
            keep.append(chunk)
            port.write_async(chunk, None, on_written, chunk)

    def on_data(_port: Any, ptr: int, size: int) -> None:
        got = state["got"]
        got.extend(ctypes.string_at(ptr, size))
        expect = state["expect"]
        if expect and len(got) >= len(expect):
            emit("echoed", n=len(expect), ok=bytes(got) == expect)
            state["expect"] = b""

    def on_opened(port: Any, _pspec: Any) -> None:
        if port.get_property("port-opened") and not state.get("opened"):
            state["opened"] = True
            emit("opened", port_name=port.get_property("port-name"))

    def on_channel_event(ch: Any, ev: Any) -> None:
        kind = "main" if isinstance(ch, SpiceClientGLib.MainChannel) else "port"
        emit("channel-event", channel=kind, name=str(ev.value_nick))

    def on_channel_new(_s: Any, ch: Any) -> None:
        if isinstance(ch, SpiceClientGLib.MainChannel):
            GObject.Object.connect(ch, "channel-event", on_channel_event)
        elif isinstance(ch, SpiceClientGLib.PortChannel) and state["port"] is None:
            state["port"] = ch
            GObject.Object.connect(ch, "notify::port-opened", on_opened)
            GObject.Object.connect(ch, "port-data", on_data)
            GObject.Object.connect(ch, "channel-event", on_channel_event)
            ch.connect()

    def on_migration_state(s: Any, _pspec: Any) -> None:
        emit("migration-state", state=int(s.get_property("migration-state")))

    def on_stdin(_fd: Any, cond: Any) -> bool:
        line = sys.stdin.readline()
        if not line:
            loop.quit()
            return False
        cmd = line.split()
        if cmd and cmd[0] == "echo":
            echo(int(cmd[1]))
        elif cmd and cmd[0] == "quit":
            loop.quit()
            return False
        return True

    GObject.Object.connect(session, "channel-new", on_channel_new)
    GObject.Object.connect(session, "notify::migration-state", on_migration_state)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
    GLib.timeout_add(int(args.timeout * 1000), on_timeout)
    session.connect()
    loop.run()
    session.disconnect()
    return 2 if state["timeout"] else 0


if __name__ == "__main__":
    sys.exit(main())
