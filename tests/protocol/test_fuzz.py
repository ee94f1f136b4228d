"""Every decoder fuzzed: valid messages or the package's own ProtocolError, nothing else,
and the framing buffer never above its bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.protocol import (
    FULL_HEADER_SIZE,
    MINI_HEADER_SIZE,
    ClientLink,
    LinkHeader,
    LinkMess,
    LinkReply,
    MessageDecoder,
    MessageEncoder,
    ProtocolError,
    ServerLink,
    decompress_body,
)
from trivmc.protocol import messages as m

BOUND = 4096
chunks = st.lists(st.binary(max_size=300), max_size=30)
CODECS = [
    m.SetAck, m.Ping, m.Pong, m.AckSync, m.Ack, m.Notify, m.Disconnecting, m.WaitForChannels,
    m.MainInit, m.MainAttachChannels, m.MainChannelsList, m.MainName, m.VmcData,
    m.MainUuid, m.MainMouseMode, m.MainMouseModeRequest,
    m.VmcCompressedData, m.PortInit, m.PortEventMsg, m.VmcMigrateDataHeader,
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(chunks, st.booleans())
def test_framing_decoder_arbitrary_bytes(parts: list[bytes], mini: bool) -> None:
    dec = MessageDecoder(mini, BOUND)
    hsize = MINI_HEADER_SIZE if mini else FULL_HEADER_SIZE
    try:
        for p in parts:
            for msg in dec.feed(p):
                assert len(msg.body) <= BOUND
            assert dec.buffered <= max(hsize, BOUND)
    except ProtocolError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=600)), max_size=12),
    st.booleans(),
    st.lists(st.integers(1, 200), min_size=1, max_size=10),
)
def test_framing_round_trip_any_chunking(
    msgs: list[tuple[int, bytes]], mini: bool, cuts: list[int]
) -> None:
    wire = MessageEncoder(mini).encode_many(msgs)
    dec = MessageDecoder(mini, BOUND)
    got: list[tuple[int, bytes]] = []
    i = k = 0
    while i < len(wire):
        step = cuts[k % len(cuts)]
        got += [(x.type, bytes(x.body)) for x in dec.feed(wire[i : i + step])]
        i += step
        k += 1
    assert got == msgs
    assert dec.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(BOUND + 1, 2**32 - 1), st.booleans())
def test_oversized_refused_before_buffering(size: int, mini: bool) -> None:
    enc = MessageEncoder(mini)
    dec = MessageDecoder(mini, BOUND)
    try:
        dec.feed(enc.header(101, size) + b"x" * 10)
    except ProtocolError:
        assert dec.buffered == 0
    else:
        raise AssertionError("oversized message accepted")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CODECS), st.binary(max_size=200))
def test_message_decoders(codec: type, body: bytes) -> None:
    try:
        codec.decode(body)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 1 << 16))
def test_decompress_checked(body: bytes, bound: int) -> None:
    try:
        out = decompress_body(body, bound)
    except ProtocolError:
        return
    assert len(out) == int.from_bytes(body[1:5], "little") <= bound


@settings(max_examples=200, deadline=None)
@given(chunks)
def test_server_link_machine(parts: list[bytes]) -> None:
    machine = ServerLink()
    for p in parts:
        machine.feed(p)  # never raises: failures are LinkFailed events


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_link_codecs(data: bytes) -> None:
    for codec in (LinkHeader, LinkMess, LinkReply):
        try:
            codec.decode(data)
        except ProtocolError:
            pass


@settings(max_examples=100, deadline=None)
@given(chunks)
def test_client_link_machine(parts: list[bytes]) -> None:
    machine = ClientLink(0, 1, 0)
    machine.initiate()
    for p in parts:
        machine.feed(p)


u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
MESSAGES = st.one_of(
    st.builds(m.SetAck, u32, u32),
    st.builds(m.Ping, u32, u64, st.integers(0, 64)),
    st.builds(m.Pong, u32, u64),
    st.builds(m.AckSync, u32),
    st.builds(m.Notify, u64, u32, u32, u32, st.binary(max_size=40)),
    st.builds(m.Disconnecting, u64, u32),
    st.builds(
        m.WaitForChannels,
        st.lists(st.builds(m.WaitForChannel, u8, u8, u64), max_size=5).map(tuple),
    ),
    st.builds(m.MainInit, u32, u32, u32, u32, u32, u32, u32, u32),
    st.builds(m.MainChannelsList, st.lists(st.tuples(u8, u8), max_size=8).map(tuple)),
    st.builds(m.MainName, st.binary(max_size=30).filter(lambda b: b"\0" not in b)),
    st.builds(m.PortInit, st.binary(min_size=1, max_size=30), st.booleans()),
    st.builds(m.PortEventMsg, u8),
    st.builds(
        m.VmcMigrateDataHeader,
        st.booleans(),
        u32,
        u32,
        st.just(0),
        u32,
        pending=st.just(b""),
    ),
)


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_message_round_trip_any_values(msg: object) -> None:
    body = msg.encode()  # type: ignore[attr-defined]
    assert type(msg).decode(body) == msg  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(u32, u8, u8, st.lists(u32, max_size=3), st.lists(u32, max_size=3), st.binary(max_size=8))
def test_link_codec_round_trip(
    cid: int, ctype: int, chid: int, com: list[int], chan: list[int], tail: bytes
) -> None:
    mess = LinkMess(cid, ctype, chid, tuple(com), tuple(chan))
    assert LinkMess.decode(mess.encode() + tail) == mess
    reply = LinkReply(cid, bytes([ctype]) * 162, tuple(com), tuple(chan))
    assert LinkReply.decode(reply.encode() + tail) == reply


@settings(max_examples=150, deadline=None)
@given(chunks, st.booleans(), st.integers(0, 64))
def test_framing_decoder_per_type_bound(parts: list[bytes], mini: bool, small: int) -> None:
    def limit(mtype: int) -> int:
        return BOUND if mtype == 101 else small

    dec = MessageDecoder(mini, small, size_limit=limit)
    hsize = MINI_HEADER_SIZE if mini else FULL_HEADER_SIZE
    try:
        for p in parts:
            for msg in dec.feed(memoryview(p)):
                assert len(msg.body) <= limit(msg.type)
            assert dec.buffered <= max(hsize, BOUND)
    except ProtocolError:
        assert dec.buffered <= max(hsize, BOUND)
