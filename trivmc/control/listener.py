"""The control socket: QMP's wire protocol over a unix socket or loopback TCP.

Each control connection gets QEMU's greeting, must send `qmp_capabilities` first, then
runs commands one at a time (`commands.py`) and, once negotiated, receives the
server's events. A control connection that sends bad JSON, unknown commands or bad
arguments gets QMP errors and goes on; one that floods or never reads its events
(more than `max_events` queued) is closed. Nothing a control client does ends the
server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..server import Server
from ..server.sockets import ListenError, listen_unix
from .commands import CommandError, Commands
from .wire import BadInput, JsonStream, ValueTooLarge, encode, error, event, greeting, reply

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
MAX_EVENTS = 10_000  # events queued for one control client before it is closed
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ControlAddress:
    """`unix:PATH` or `tcp:HOST:PORT` (HOST a loopback address)."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"tcp:{self.host}:{self.port}"


def parse_control_address(text: str) -> ControlAddress:
    """ValueError unless `text` is unix:PATH or tcp:LOOPBACK:PORT: the control socket
    can change tickets and channels, so it is never reachable from the network."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return ControlAddress(path=rest)
    if kind == "tcp":
        host, sep, port = rest.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected tcp:HOST:PORT, got {text!r}")
        if host not in LOOPBACK_NAMES:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"the control socket listens on loopback only, not {host!r}")
        return ControlAddress(host=host, port=int(port))
    raise ValueError(f"expected unix:PATH or tcp:127.0.0.1:PORT, got {text!r}")


def inherited_control_address(sock: socket.socket) -> ControlAddress:
    """The address of a control socket passed already listening (systemd socket
    activation); ValueError, as `parse_control_address`, unless it is a unix socket or
    a loopback TCP one."""
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = "@" + os.fsdecode(addr[1:]) if isinstance(addr, bytes) else str(addr)
        return ControlAddress(path=path)
    host, port = addr[0], addr[1]
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the control socket listens on loopback only, not {host!r}")
    return ControlAddress(host=host, port=port)


def version_tuple(text: str) -> tuple[int, int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in text.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


class ControlServer:
    """Serves the control socket of `server` at `address`. With `listener` (a socket
    already listening at `address`: systemd socket activation, see
    `inherited_control_address`) it serves that one, and never binds or unlinks."""

    def __init__(
        self, server: Server, address: ControlAddress, *, version: str = "0.0.0",
        max_events: int = MAX_EVENTS, listener: socket.socket | None = None,
    ) -> None:  # fmt: skip
        self.server = server
        self.address = address
        self.listener = listener
        self.commands = Commands(server, version_tuple(version), version)
        self.max_events = max_events
        self.connections = 0
        self.bound: str = str(address)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve control connections until cancelled; the start value is
        the bound address (tcp:HOST:PORT with the real port)."""
        listeners = await self._listen()
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(trio.serve_listeners, self._connection, [listener])
                log.info("control socket on %s", self.bound)
                task_status.started(self.bound)
        finally:
            if self.address.path is not None and self.listener is None:
                with contextlib.suppress(OSError):
                    os.unlink(self.address.path)

    async def _listen(self) -> list[trio.SocketListener]:
        """The listening sockets; ListenError (an OSError naming the address) when the
        address cannot be used."""
        try:
            return await self._open_listeners()
        except ListenError:
            raise
        except OSError as e:
            raise ListenError(
                e.errno, f"cannot listen on {self.address}: {e.strerror or e}"
            ) from e

    async def _open_listeners(self) -> list[trio.SocketListener]:
        if self.listener is not None:  # the service manager's: it keeps the path
            return [trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))]
        if self.address.path is not None:  # only the owner may drive the server
            sock = await listen_unix(self.address.path, private=True, backlog=16)
            return [trio.SocketListener(sock)]
        assert self.address.host is not None
        listeners = await trio.open_tcp_listeners(self.address.port, host=self.address.host)
        host, port = listeners[0].socket.getsockname()[:2]
        self.bound = f"tcp:{host}:{port}"
        return listeners

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await ControlConnection(self, stream).run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.info("control connection lost: %s", group.exceptions[0])
        except* ValueTooLarge as group:
            log.warning("control connection closed: %s", group.exceptions[0])
        except* Exception as group:  # a bug: this connection ends, the socket goes on
            log.error("control connection failed", exc_info=group)
        finally:
            with trio.move_on_after(1):
                await stream.aclose()


class ControlConnection:
    """One control client: replies and events go out in order through one queue."""

    def __init__(self, owner: ControlServer, stream: trio.abc.Stream) -> None:
        self.owner = owner
        self.stream = stream
        self.negotiated = False
        # (is an event, the encoded message, what to do once it is sent); unbounded,
        # but events are counted
        self._send, self._recv = trio.open_memory_channel[
            tuple[bool, bytes, Callable[[], None] | None]
        ](math.inf)
        self._events_queued = 0
        self._overflow = False
        self._unsubscribe: Any = None
        self._scope: trio.CancelScope | None = None

    async def run(self) -> None:
        """Serve this control client until it closes, or is closed for not reading."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                self._out(greeting(self.owner.commands.version, self.owner.commands.package))
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()

    def _out(
        self, msg: dict[str, Any], is_event: bool = False, then: Callable[[], None] | None = None
    ) -> None:
        if not self._overflow:
            self._send.send_nowait((is_event, encode(msg), then))

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if self._overflow:
            return
        if self._events_queued >= self.owner.max_events:
            self._overflow = True
            log.warning(
                "control client reads no events (%d queued): closing it", self._events_queued
            )
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if self._scope is not None:
                self._scope.cancel()  # its writer may be stuck on a full socket
            return
        self._events_queued += 1
        self._out(event(name, data), is_event=True)

    async def _writer(self) -> None:
        async for is_event, data, then in self._recv:
            self._events_queued -= is_event
            try:
                await self.stream.send_all(data)
            finally:
                if then is not None:
                    then()  # (also when the client is gone: it was answered as it could)

    async def _reader(self) -> None:
        parser = JsonStream()
        while True:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            for item in parser.feed(bytes(data)):
                if isinstance(item, BadInput):
                    self._out(error("GenericError", item.desc))
                else:
                    await self._handle(item.value)

    async def _handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self._out(error("GenericError", "QMP input must be a JSON object"))
            return
        has_id = "id" in msg
        cmd_id = msg.get("id")

        def fail(cls: str, desc: str) -> None:
            self._out(error(cls, desc, cmd_id, has_id=has_id))

        for key in msg:
            if key not in ("execute", "arguments", "id", "exec-oob"):
                fail("GenericError", f"QMP input member '{key}' is unexpected")
                return
        name = msg.get("execute")
        if not isinstance(name, str):
            fail("GenericError", "QMP input member 'execute' must be a string")
            return
        args = msg.get("arguments", {})
        if not isinstance(args, dict):
            fail("GenericError", "QMP input member 'arguments' must be an object")
            return
        if name == "qmp_capabilities":
            if self.negotiated:
                fail(
                    "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored",
                )
                return
            enable = args.get("enable") or []
            if args.keys() - {"enable"} or not isinstance(enable, list) or enable:
                what = enable[0] if isinstance(enable, list) and enable else "enable"
                fail("GenericError", f"Capability '{what}' not available")
                return
            self.negotiated = True
            self._unsubscribe = self.owner.server.events.subscribe(self._on_event)
            self._out(reply({}, cmd_id, has_id=has_id))
            return
        if not self.negotiated:
            fail("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
            return
        commands = self.owner.commands
        try:
            result = await commands.run(name, args)
            then, commands.after_reply = commands.after_reply, None
        except CommandError as e:
            fail(e.cls, str(e))
            return
        except Exception as e:  # a bug in one command must not end the connection
            log.exception("control command %s failed", name)
            fail("GenericError", f"internal error: {e}")
            return
        self._out(reply(result, cmd_id, has_id=has_id), then=then)
