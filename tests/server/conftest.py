"""One shared fixture for server-channel tests without sockets: `memory_channel()` gives
the server's end of an in-memory stream pair and a `Peer` on the other end, which frames
what a test sends and decodes what the server sent, and answers nothing on its own (so a
test sees exactly what the server does, not what trivmc's client would make of it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from trivmc.protocol import Message, MessageDecoder, MessageEncoder


class Peer:
    """The client's end of one channel connection, driven by the test."""

    def __init__(self, stream: trio.abc.Stream, mini_header: bool = True) -> None:
        self.stream = stream
        self.encoder = MessageEncoder(mini_header)
        self.decoder = MessageDecoder(mini_header, 1 << 24)
        self._got: list[Message] = []

    async def send(self, mtype: int, body: bytes = b"") -> None:
        await self.stream.send_all(self.encoder.encode(mtype, body))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, n: int = 1) -> list[Message]:
        """The next `n` messages the server sent (bodies copied)."""
        with trio.fail_after(10):
            while len(self._got) < n:
                data = await self.stream.receive_some()
                assert data, f"closed after {len(self._got)} of {n} messages"
                self._got += [Message(m.type, bytes(m.body)) for m in self.decoder.feed(data)]
        out, self._got = self._got[:n], self._got[n:]
        return out

    async def expect_closed(self) -> list[Message]:
        """Every message until the server closes its end."""
        got = self._got
        self._got = []
        with trio.fail_after(10):
            while data := await self.stream.receive_some():
                got += [Message(m.type, bytes(m.body)) for m in self.decoder.feed(data)]
        return got


MemoryChannel = Callable[[], tuple[trio.abc.Stream, Peer]]


@pytest.fixture
def memory_channel() -> MemoryChannel:
    """Make (server stream, Peer) pairs joined in memory."""

    def make() -> tuple[trio.abc.Stream, Peer]:
        server_end, peer_end = trio.testing.memory_stream_pair()
        return server_end, Peer(peer_end)

    return make
