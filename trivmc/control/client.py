"""A small trio QMP client for trivmc's control socket (and QEMU's QMP): connect,
negotiate, run commands one at a time, collect the events that arrive meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from .listener import ControlAddress, parse_control_address
from .wire import BadInput, JsonStream, encode

RECEIVE_SIZE = 65536


class QmpError(Exception):
    """The server answered a command with an error: `cls` and the text of its desc."""

    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


class ControlClient:
    """One negotiated QMP connection. `events` holds events received so far."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.greeting: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self._parser = JsonStream()
        self._pending: list[Any] = []
        self._next_id = 0

    async def _receive(self) -> dict[str, Any]:
        while not self._pending:
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise trio.BrokenResourceError("the control socket closed")
            for item in self._parser.feed(bytes(data)):
                if isinstance(item, BadInput):
                    raise trio.BrokenResourceError(f"bad JSON from the server: {item.desc}")
                self._pending.append(item.value)
        msg = self._pending.pop(0)
        if not isinstance(msg, dict):
            raise trio.BrokenResourceError(f"not a QMP message: {msg!r}")
        return msg

    async def negotiate(self) -> None:
        """Read the greeting (kept in `greeting`) and leave negotiation mode
        (qmp_capabilities); BrokenResourceError if the peer is not a QMP server."""
        self.greeting = await self._receive()
        if "QMP" not in self.greeting:
            raise trio.BrokenResourceError(f"not a QMP greeting: {self.greeting!r}")
        await self.execute("qmp_capabilities")

    async def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command; its `return` value, or QmpError."""
        self._next_id += 1
        cmd_id = f"trivmc-{self._next_id}"
        msg: dict[str, Any] = {"execute": name, "id": cmd_id}
        if arguments:
            msg["arguments"] = arguments
        await self.stream.send_all(encode(msg))
        while True:
            answer = await self._receive()
            if "event" in answer:
                self.events.append(answer)
                continue
            if answer.get("id") != cmd_id:
                continue  # an answer to something else (an id-less error)
            if "error" in answer:
                err = answer["error"]
                raise QmpError(str(err.get("class")), str(err.get("desc")))
            return answer.get("return")

    async def next_event(self) -> dict[str, Any]:
        """The next event (those received during commands first)."""
        if self.events:
            return self.events.pop(0)
        while True:
            msg = await self._receive()
            if "event" in msg:
                return msg


async def open_control_stream(address: ControlAddress) -> trio.abc.Stream:
    if address.path is not None:
        return await trio.open_unix_socket(address.path)
    assert address.host is not None
    return await trio.open_tcp_stream(address.host, address.port)


@contextlib.asynccontextmanager
async def control_client(target: str) -> AsyncIterator[ControlClient]:
    """A negotiated client of the control socket at `target` (unix:PATH, tcp:HOST:PORT,
    or a plain path)."""
    address = parse_control_address(target if ":" in target else f"unix:{target}")
    stream = await open_control_stream(address)
    async with stream:
        client = ControlClient(stream)
        with trio.fail_after(10):
            await client.negotiate()
        yield client
