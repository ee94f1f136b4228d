"""The link machines fed mutated, arbitrarily chunked versions of a valid exchange:
they never raise, and an unmutated exchange always links with the right trailing data."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    CommonCap,
    Linked,
    LinkError,
    LinkEvent,
    LinkFailed,
    LinkKey,
    LinkReply,
    LinkRequest,
    ServerLink,
    TicketReceived,
    encode_reply,
    encode_result,
)

caps = st.lists(st.integers(0, 40), max_size=4)
common = st.lists(st.sampled_from(list(CommonCap)), max_size=4)
mutations = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3)
cuts = st.lists(st.integers(1, 64), min_size=1, max_size=8)


def mutate(data: bytes, muts: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, val in muts:
        if buf:
            buf[pos % len(buf)] = val
    return bytes(buf[:cut]) if cut is not None else bytes(buf)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([ChannelType.MAIN, ChannelType.USBREDIR, ChannelType.PORT]),
    caps,
    common,
    mutations,
    st.none() | st.integers(0, 300),
    cuts,
    st.binary(max_size=20),
)
def test_server_machine_on_mutated_client_stream(
    link_key: LinkKey,
    ctype: int,
    channel_caps: list[int],
    common_caps: list[int],
    muts: list[tuple[int, int]],
    cut: int | None,
    sizes: list[int],
    extra: bytes,
) -> None:
    client = ClientLink(9, ctype, 0, channel_caps, common_caps=common_caps)
    mech = b"\x01\x00\x00\x00" if CommonCap.PROTOCOL_AUTH_SELECTION in common_caps else b""
    wire = client.initiate() + mech + bytes(128) + extra
    data = mutate(wire, muts, cut)
    server = ServerLink()
    events: list[LinkEvent] = []
    for part in chunked(data, sizes):
        queue = server.feed(part)
        while queue:
            ev = queue.pop(0)
            events.append(ev)
            if isinstance(ev, LinkRequest):
                server.accept(link_key.public_der)
                queue += server.feed(b"")
            elif isinstance(ev, TicketReceived):
                assert len(ev.ticket) == 128
                server.result(LinkError.OK)
    if not muts and cut is None:
        assert server.done and server.trailing == extra
        assert [type(e) for e in events] == [LinkRequest, TicketReceived]
    failed = [e for e in events if isinstance(e, LinkFailed)]
    assert len(failed) <= 1
    if failed:
        assert not server.done and failed[0].data  # an error reply or result to send


@settings(max_examples=60, deadline=None)
@given(
    caps,
    mutations,
    st.none() | st.integers(0, 300),
    cuts,
    st.binary(max_size=20),
    st.sampled_from([LinkError.OK, LinkError.PERMISSION_DENIED]),
)
def test_client_machine_on_mutated_server_stream(
    link_key: LinkKey,
    channel_caps: list[int],
    muts: list[tuple[int, int]],
    cut: int | None,
    sizes: list[int],
    extra: bytes,
    result: LinkError,
) -> None:
    reply = LinkReply(0, link_key.public_der, (0x0B,), tuple(channel_caps[:1]))
    wire = encode_reply(reply) + encode_result(result) + extra
    data = mutate(wire, muts, cut)
    client = ClientLink(0, ChannelType.USBREDIR, 0, [0])
    client.initiate()
    events: list[LinkEvent] = []
    for part in chunked(data, sizes):
        events += client.feed(part)
    if not muts and cut is None:
        if result == LinkError.OK:
            assert client.done and isinstance(events[-1], Linked)
            assert client.trailing == extra
        else:
            assert isinstance(events[-1], LinkFailed) and events[-1].code == result
    assert sum(isinstance(e, LinkFailed | Linked) for e in events) <= 1
