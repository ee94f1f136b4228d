"""A VMC channel client fed arbitrary message streams: it either serves them or ends
with a ProtocolError for that client only, and every token and buffer comes back."""

from __future__ import annotations

import struct

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc._groups import leaf_exceptions
from trivmc.backends import EchoBackend
from trivmc.protocol import ChannelType, MessageEncoder, ProtocolError
from trivmc.server import ChannelOptions, VmcChannel, VmcChannelClient

messages = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([101, 102, 201, 1, 2, 3, 6, 999]), st.binary(max_size=300)),
        st.tuples(
            st.just(102), st.binary(max_size=40).map(lambda b: struct.pack("<BI", 1, 64) + b)
        ),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(messages, st.integers(1, 50))
def test_arbitrary_client_messages(msgs: list[tuple[int, bytes]], cut: int) -> None:
    async def scenario() -> None:
        channel = VmcChannel(ChannelType.PORT, 0, EchoBackend(), "org.fuzz.0")
        wire = MessageEncoder(True).encode_many(msgs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run)
            await trio.testing.wait_all_tasks_blocked()
            a, b = trio.testing.memory_stream_pair()
            opts = ChannelOptions("fuzz", True, 4096, False)
            client = VmcChannelClient(a, opts, channel=channel, peer_lz4=True)

            async def peer() -> None:
                for i in range(0, len(wire), cut):
                    await b.send_all(wire[i : i + cut])
                await b.aclose()

            async def drain() -> None:  # read what the server sends back
                try:
                    while await b.receive_some():
                        pass
                except trio.ClosedResourceError:
                    pass

            nursery.start_soon(drain)
            nursery.start_soon(peer)
            try:
                await channel.serve_client(client, b"")
            except BaseException as e:
                bad = [
                    x
                    for x in leaf_exceptions(e)
                    if not isinstance(
                        x, ProtocolError | trio.BrokenResourceError | trio.ClosedResourceError
                    )
                ]
                assert not bad, bad
            await trio.testing.wait_all_tasks_blocked()
            device = channel.device
            assert device.client is None and client.queued_bytes == 0
            assert device.idle and device.tokens_free == 128
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
