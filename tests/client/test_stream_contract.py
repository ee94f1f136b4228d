"""`ChannelStream` (the client's VMC channel) against trio's generic stream checks.

The pair: two `ChannelStream`s joined back to back by an in-memory transport, each on
its own `MessageConnection`. Both ends are the class under test, and what passes
between them is SPICE's VMC framing (mini headers, DATA or COMPRESSED_DATA), which is
also what a server sends a client: the DATA and COMPRESSED_DATA message ids are the same
in both directions. What this leaves out (the link, the server's tokens) is covered by
the tests against a real server.

`check_two_way_stream`, not `check_half_closeable_stream`: SPICE has no half-close on
the wire, so `send_eof` only forbids further sends (checked separately below) and the
peer sees no end of stream. The clogged pair runs over `lockstep_stream_pair` (a send
waits until the peer reads) and is filled first: each end's reader task takes messages
off the transport into a `RECEIVE_QUEUE`-message queue whatever the application reads,
so that many messages and one more (held by the reader) are sent each way before the
pair is handed over; the checks' receivers then read those filler bytes too.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trivmc.client import ChannelStream
from trivmc.client.connection import LinkedStream, MessageConnection
from trivmc.client.stream import RECEIVE_QUEUE
from trivmc.protocol import ChannelType


def channel(transport: trio.abc.Stream, lz4: bool) -> ChannelStream:
    linked = LinkedStream(transport, True, (), (), b"")
    return ChannelStream(
        MessageConnection(linked),
        ChannelType.PORT,
        0,
        lz4_out=lz4,
        is_unix=False,
        on_close=lambda _: None,
    )


@pytest.mark.parametrize("lz4", [False, True])
async def test_channel_stream_is_a_trio_stream(lz4: bool) -> None:
    async with trio.open_nursery() as nursery:

        async def make() -> tuple[ChannelStream, ChannelStream]:
            a, b = trio.testing.memory_stream_pair()
            left, right = channel(a, lz4), channel(b, lz4)
            await nursery.start(left.run)
            await nursery.start(right.run)
            return left, right

        async def make_clogged() -> tuple[ChannelStream, ChannelStream]:
            a, b = trio.testing.lockstep_stream_pair()
            left, right = channel(a, lz4), channel(b, lz4)
            await nursery.start(left.run)
            await nursery.start(right.run)
            for _ in range(RECEIVE_QUEUE + 1):
                await left.send_all(b"f")
                await right.send_all(b"f")
            return left, right

        await trio.testing.check_two_way_stream(make, make_clogged)
        nursery.cancel_scope.cancel()


async def test_send_eof_forbids_sends_only() -> None:
    """The half of `check_half_closeable_stream` that SPICE can keep: after `send_eof`
    sends raise ClosedResourceError, `send_eof` may be called again (a checkpoint each
    time), and data still flows the other way."""
    a, b = trio.testing.memory_stream_pair()
    left, right = channel(a, False), channel(b, False)
    async with trio.open_nursery() as nursery:
        await nursery.start(left.run)
        await nursery.start(right.run)
        await left.send_all(b"x")
        with trio.testing.assert_checkpoints():
            await left.send_eof()
        assert await right.receive_some(10) == b"x"
        with pytest.raises(trio.ClosedResourceError):
            await left.send_all(b"y")
        with trio.testing.assert_checkpoints():
            await left.send_eof()
        await right.send_all(b"z")
        assert await left.receive_some(10) == b"z"
        await left.aclose()
        await right.aclose()
