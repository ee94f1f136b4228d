"""MessageDecoder / MessageEncoder behaviour beyond round trips."""

from __future__ import annotations

import pytest

from trivmc.protocol import (
    FULL_HEADER_SIZE,
    MINI_HEADER_SIZE,
    Message,
    MessageDecoder,
    MessageEncoder,
    MessageTooLarge,
    MsgVmc,
)


def test_bodies_inside_one_chunk_are_views_of_it() -> None:
    wire = MessageEncoder(True).encode_many([(101, b"abc"), (102, b"")])
    (a, b) = MessageDecoder(True, 100).feed(wire)
    assert isinstance(a.body, memoryview) and a.body.obj is wire
    assert (a.type, bytes(a.body), b.type, bytes(b.body)) == (101, b"abc", 102, b"")


def test_body_split_over_chunks_is_handed_over_whole() -> None:
    wire = MessageEncoder(True).encode(101, bytes(range(200)))
    dec = MessageDecoder(True, 1000)
    assert dec.feed(wire[:3]) == [] and dec.pending and dec.buffered == 3
    assert dec.feed(wire[3:6]) == [] and dec.pending  # header complete, no body yet
    assert dec.feed(wire[6:100]) == [] and dec.buffered == 94
    (msg,) = dec.feed(wire[100:])
    assert bytes(msg.body) == bytes(range(200))
    assert not dec.pending and dec.buffered == 0
    # the handed-over buffer is no longer the decoder's
    dec.feed(wire[:50])
    assert bytes(msg.body) == bytes(range(200))


def test_header_then_whole_body_in_next_chunk_is_zero_copy() -> None:
    wire = MessageEncoder(True).encode(101, b"payload")
    dec = MessageDecoder(True, 100)
    assert dec.feed(wire[:6]) == []
    rest = wire[6:]
    (msg,) = dec.feed(rest)
    assert isinstance(msg.body, memoryview) and msg.body.obj is rest


def test_full_header_decoder_and_serials() -> None:
    enc = MessageEncoder(mini_header=False)
    wire = enc.encode(101, b"a") + enc.encode(102, b"bc")
    assert enc.serial == 2
    assert wire[:8] == (1).to_bytes(8, "little")
    assert wire[FULL_HEADER_SIZE + 1 :][:8] == (2).to_bytes(8, "little")
    got = MessageDecoder(False, 10).feed(wire)
    assert got == [Message(101, memoryview(b"a")), Message(102, memoryview(b"bc"))]


def test_encode_into_batches_like_encode_many() -> None:
    a, b = MessageEncoder(False), MessageEncoder(False)
    buf = bytearray()
    a.encode_into(buf, 101, b"xy")
    a.encode_into(buf, 202, memoryview(b"\x02"))
    assert bytes(buf) == b.encode_many([(101, b"xy"), (202, b"\x02")])


def test_too_large_refused_at_header_and_sticky() -> None:
    enc = MessageEncoder(True)
    dec = MessageDecoder(True, 10)
    ok = enc.encode(101, b"x" * 10)
    bad = enc.header(101, 11)
    with pytest.raises(MessageTooLarge):
        dec.feed(ok + bad[:3])
        dec.feed(bad[3:])  # the header completes here: refused with no body byte sent
    assert dec.buffered <= MINI_HEADER_SIZE
    with pytest.raises(MessageTooLarge):
        dec.feed(b"")


def test_per_type_size_limit() -> None:
    def limit(mtype: int) -> int:
        return 1 << 20 if mtype == MsgVmc.DATA else 16

    enc = MessageEncoder(True)
    dec = MessageDecoder(True, 16, size_limit=limit)
    (msg,) = dec.feed(enc.encode(MsgVmc.DATA, bytes(1000)))
    assert len(msg.body) == 1000
    with pytest.raises(MessageTooLarge):
        dec.feed(enc.encode(MsgVmc.PORT_EVENT, bytes(17)))


def test_non_byte_memoryview_input() -> None:
    import array

    wire = MessageEncoder(True).encode(101, b"abcd" * 2)
    arr = array.array("H", wire)  # 14 bytes, itemsize 2
    (msg,) = MessageDecoder(True, 100).feed(memoryview(arr))
    assert bytes(msg.body) == b"abcd" * 2
    strided = memoryview(bytes(b for x in wire for b in (x, 0)))[::2]
    (msg,) = MessageDecoder(True, 100).feed(strided)
    assert bytes(msg.body) == b"abcd" * 2
