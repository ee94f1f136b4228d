"""A scripted SPICE server for the client's migration tests: it links whatever comes
(any ticket) and hands each linked connection to the test, which then plays the
server's part message by message. Loopback only; everything it starts ends with the
nursery that runs it."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from trivmc.protocol import (
    LinkFailed,
    LinkRequest,
    Message,
    MessageDecoder,
    MessageEncoder,
    TicketReceived,
)
from trivmc.protocol.constants import LinkError
from trivmc.protocol.link_codec import LinkMess
from trivmc.protocol.link_server import ServerLink
from trivmc.protocol.ticket import generate_key

_KEY = None


def key_der() -> bytes:
    global _KEY
    if _KEY is None:
        _KEY = generate_key()
    return _KEY.public_der


@dataclass(eq=False)
class Linked:
    """One linked connection, seen from the server."""

    mess: LinkMess
    stream: trio.SocketStream
    decoder: MessageDecoder
    encoder: MessageEncoder

    @property
    def kind(self) -> tuple[int, int]:
        return self.mess.channel_type, self.mess.channel_id

    async def send(self, mtype: int, body: bytes = b"") -> None:
        await self.stream.send_all(self.encoder.encode(mtype, body))

    async def receive(self) -> Message:
        """The next message; AssertionError at EOF, TooSlowError after 10 s without one."""
        while True:
            msgs = self._pending
            if msgs:
                return msgs.pop(0)
            with trio.fail_after(10):
                data = await self.stream.receive_some(65536)
            assert data, f"{self.kind}: closed"
            self._pending.extend(Message(m.type, bytes(m.body)) for m in self.decoder.feed(data))

    async def expect(self, mtype: int) -> Message:
        """The next message that is not a PONG; it must be `mtype`."""
        while True:
            msg = await self.receive()
            if msg.type != 3:  # PONG
                assert msg.type == mtype, (self.kind, msg.type, mtype)
                return msg

    async def data(self, n: int) -> bytes:
        """`n` bytes of DATA (type 101) messages."""
        got = b""
        while len(got) < n:
            got += bytes((await self.expect(101)).body)
        return got

    async def rest(self) -> list[int]:
        """The types of the messages still coming, until the client closes."""
        types = [m.type for m in self._pending]
        self._pending.clear()
        try:
            while data := await self.stream.receive_some(65536):
                types += [m.type for m in self.decoder.feed(data)]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return types

    async def closed(self) -> bool:
        """Whether the client closed it (EOF), after whatever was still coming."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return True

    def __post_init__(self) -> None:
        self._pending: list[Message] = []


class FakeSpice:
    """Accepts on a loopback port; `links` yields each linked connection in turn."""

    def __init__(self) -> None:
        self.port = 0
        self._send, self.links = trio.open_memory_channel[Linked](100)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        link = ServerLink()
        while not link.done:
            data = await stream.receive_some(4096)
            if not data:
                return
            events = link.feed(data)
            while events:
                ev = events.pop(0)
                if isinstance(ev, LinkFailed):
                    await stream.send_all(ev.data)
                    return
                if isinstance(ev, LinkRequest):
                    await stream.send_all(link.accept(key_der()))
                    events.extend(link.feed(b""))
                elif isinstance(ev, TicketReceived):
                    await stream.send_all(link.result(LinkError.OK))
        assert link.mess is not None
        decoder = MessageDecoder(link.mini_header, 1 << 24)
        linked = Linked(link.mess, stream, decoder, MessageEncoder(link.mini_header))
        linked._pending.extend(Message(m.type, bytes(m.body)) for m in decoder.feed(link.trailing))
        await self._send.send(linked)
        await trio.sleep_forever()  # the test owns the stream from here

    async def next_link(self, kind: tuple[int, int] | None = None) -> Linked:
        with trio.fail_after(10):
            linked = await self.links.receive()
        if kind is not None:
            assert linked.kind == kind, (linked.kind, kind)
        return linked
