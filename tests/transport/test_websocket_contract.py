"""`WebSocketStream` against trio's generic stream checks (`check_two_way_stream`).

The pair is a client side (`connect_websocket`) and a server side (`accept_websocket`)
over an in-memory transport: both ends are the class under test, speaking real
WebSocket frames (wsproto) to each other. The clogged pair runs over
`lockstep_stream_pair`, whose `send_all` waits until the peer reads, which is what the
checks of `wait_send_all_might_not_block` and concurrent sends need. WebSocket has no
half-close that SPICE uses, so the stream is a plain `trio.abc.Stream`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from trivmc.transport import accept_websocket, connect_websocket
from trivmc.transport.websocket import WebSocketStream

Pair = tuple[trio.abc.Stream, trio.abc.Stream]


async def upgrade(
    a: trio.abc.Stream, b: trio.abc.Stream
) -> tuple[WebSocketStream, WebSocketStream]:
    """A connected (client, server) WebSocketStream pair over the transports a and b."""
    out: dict[str, WebSocketStream] = {}

    async def client() -> None:
        out["client"] = await connect_websocket(a, "localhost")

    async def server() -> None:
        out["server"] = await accept_websocket(b)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    return out["client"], out["server"]


def maker(transports: Callable[[], Pair]) -> Callable[[], Awaitable[Pair]]:
    async def make() -> Pair:
        return await upgrade(*transports())

    return make


async def test_websocket_stream_is_a_trio_stream() -> None:
    await trio.testing.check_two_way_stream(
        maker(trio.testing.memory_stream_pair),
        maker(trio.testing.lockstep_stream_pair),
    )


async def test_websocket_stream_either_side_first() -> None:
    """The server side as the first stream of the pair (the checks send from it)."""

    async def make() -> tuple[WebSocketStream, WebSocketStream]:
        client, server = await upgrade(*trio.testing.memory_stream_pair())
        return server, client

    await trio.testing.check_two_way_stream(make, None)


async def test_data_before_a_close_survives_a_vanished_peer() -> None:
    """Found by the checks: a peer that sent data, a close frame and then closed its
    transport made the answer to the close frame raise BrokenResourceError, and the data
    read with the close frame was lost. Now the data, then end of stream, come out."""
    client, server = await upgrade(*trio.testing.memory_stream_pair())
    await client.send_all(b"last words")
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    await server.aclose()
