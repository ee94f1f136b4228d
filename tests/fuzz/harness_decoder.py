"""Decoder harness: `MessageDecoder` (mini and full headers, a bound, per-type bounds,
arbitrary chunking) and the message codecs of `trivmc.protocol.messages`.

Input: u8 flags (target, header, per-type bounds, chunk type), bounds, cuts, then the
stream (or the codec's body). Asserted, against a plain reference parser of the same
stream:

- `feed` raises only `ProtocolError`, and only `MessageTooLarge` for a header whose
  size is above its bound; after an error every later `feed` raises it again;
- `buffered <= max(header size, bound)` after every feed, error or not;
- the messages are exactly the reference's (types and bodies, in order), whatever the
  chunking, and bodies handed out earlier still hold their bytes at the end (nothing
  handed over is reused); `pending` tells whether the stream stopped inside a message;
- a codec's `decode` raises only `ProtocolError`, and what it decodes re-encodes to
  bytes that decode to the same value.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

from trivmc.protocol import (
    FULL_HEADER_SIZE,
    MINI_HEADER_SIZE,
    Message,
    MessageDecoder,
    MessageEncoder,
    MessageTooLarge,
    ProtocolError,
)
from trivmc.protocol import messages as m

from .fuzzdata import FuzzInput, FuzzOutput, split

MAX_LEN = 4096
MAX_PIECES = 64  # the rest of the stream goes in the last piece

CODECS: tuple[type[Any], ...] = (
    m.SetAck, m.Ping, m.Pong, m.AckSync, m.Ack, m.Notify, m.Disconnecting,
    m.WaitForChannels, m.MainInit, m.MainMouseMode, m.MainMouseModeRequest, m.MainUuid,
    m.MainAttachChannels, m.MainChannelsList, m.MainName, m.VmcData, m.VmcCompressedData,
    m.PortInit, m.PortEventMsg, m.VmcMigrateDataHeader,
)  # fmt: skip

F_CODEC = 1  # target: a codec instead of the framing decoder
F_MINI = 2
F_PER_TYPE = 4  # a size_limit function (odd types get the small bound)
F_MEMORYVIEW = 8  # feed memoryviews instead of bytes
F_BYTEARRAY = 16  # feed bytearrays


def fuzz_one(data: bytes) -> None:
    inp = FuzzInput(data)
    flags = inp.u8()
    if flags & F_CODEC:
        _codec(inp.u8(), inp.rest())
    else:
        _framing(flags, inp)


# ---- framing -----------------------------------------------------------------------


def _reference(
    data: bytes, mini: bool, limit: Callable[[int], int]
) -> tuple[list[tuple[int, bytes]], bool, int]:
    """(messages, whether a size was above its bound, bytes left after them)."""
    header = struct.Struct("<HI" if mini else "<QHII")
    out: list[tuple[int, bytes]] = []
    off = 0
    while len(data) - off >= header.size:
        if mini:
            mtype, size = header.unpack_from(data, off)
        else:
            _, mtype, size, _ = header.unpack_from(data, off)
        if size > limit(mtype):
            return out, True, len(data) - off
        end = off + header.size + size
        if end > len(data):
            break
        out.append((mtype, data[off + header.size : end]))
        off = end
    return out, False, len(data) - off


def _framing(flags: int, inp: FuzzInput) -> None:
    mini = bool(flags & F_MINI)
    bound = inp.u16() % 4097
    small = inp.u8()
    cuts = inp.cuts()
    data = inp.rest()
    size_limit: Callable[[int], int] | None = None
    if flags & F_PER_TYPE:

        def size_limit(mtype: int) -> int:
            return small if mtype & 1 else bound

    limit = size_limit or (lambda mtype: bound)
    hsize = MINI_HEADER_SIZE if mini else FULL_HEADER_SIZE
    cap = max(hsize, bound, small if size_limit else 0)

    dec = MessageDecoder(mini, bound, size_limit)
    assert dec.header_size == hsize
    got: list[Message] = []
    error: ProtocolError | None = None
    for piece in split(data, cuts, MAX_PIECES):
        chunk: bytes | bytearray | memoryview = piece
        if flags & F_MEMORYVIEW:
            chunk = memoryview(piece)
        elif flags & F_BYTEARRAY:
            chunk = bytearray(piece)
        try:
            msgs = dec.feed(chunk)
        except ProtocolError as e:
            error = e
        assert dec.buffered <= cap, (dec.buffered, cap)
        if error is not None:
            break
        for msg in msgs:
            assert len(msg.body) <= limit(msg.type)
        got += msgs
    ref, too_large, left = _reference(data, mini, limit)
    bodies = [(msg.type, bytes(msg.body)) for msg in got]
    if error is not None:
        assert isinstance(error, MessageTooLarge) and too_large, error
        assert bodies == ref[: len(bodies)]
        for again in (b"", b"\0" * 20):
            try:
                dec.feed(again)
            except ProtocolError as e:
                assert type(e) is type(error) and str(e) == str(error)
            else:
                raise AssertionError("a feed after an error did not raise")
        return
    assert not too_large, "a size above its bound went through"
    assert bodies == ref, (bodies, ref)
    assert dec.pending == (left > 0)
    assert dec.buffered == (left if left < hsize else left - hsize)


# ---- codecs ------------------------------------------------------------------------


def _codec(which: int, body: bytes) -> None:
    codec = CODECS[which % len(CODECS)]
    try:
        value = codec.decode(body)
    except ProtocolError:
        return
    if isinstance(value, m.VmcMigrateDataHeader):
        value = dataclasses.replace(value, write_data_ptr=33)  # encode() puts it at 33
    again = codec.decode(value.encode())
    assert again == value, (again, value)


# ---- seeds -------------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    mini = MessageEncoder(True)
    ping = mini.encode(4, m.Ping(1, 0x1EE32A014).encode())
    data = mini.encode(101, b"hello from spice-gtk")
    port_event = mini.encode(201, b"\x02")
    attach = mini.encode(104)
    stream = data + port_event + attach + ping
    full = MessageEncoder(False)
    full_stream = full.encode_many([(101, b"abcd"), (3, m.Pong(1, 5).encode()), (104, b"")])

    def framing(flags: int, bound: int, small: int, cuts: list[int], wire: bytes) -> bytes:
        return FuzzOutput().u8(flags).u16(bound).u8(small).cuts(cuts).raw(wire).bytes()

    def codec(cls: type, body: bytes) -> bytes:
        return FuzzOutput().u8(F_CODEC).u8(CODECS.index(cls)).raw(body).bytes()

    out = {
        "mini-stream": framing(F_MINI, 4096, 0, [], stream),
        "mini-stream-cut": framing(F_MINI | F_MEMORYVIEW, 4096, 0, [1, 3, 7, 2], stream),
        "mini-per-type": framing(F_MINI | F_PER_TYPE, 100, 1, [5], stream),
        "mini-too-large": framing(F_MINI, 16, 0, [4], mini.encode(101, bytes(40))),
        "full-stream": framing(F_BYTEARRAY, 64, 0, [9, 18], full_stream),
        "full-partial": framing(0, 4096, 0, [], full_stream[:-3]),
    }
    values: list[object] = [
        m.SetAck(1, 20),
        m.Ping(3, 5, 8),
        m.Notify(0, 1, 2, 0, b"x" * 28),
        m.WaitForChannels((m.WaitForChannel(9, 0, 7),)),
        m.MainInit(0x331DD668, 0, 1, 1, 0, 10, 0x007E822E, 0),
        m.MainChannelsList(((10, 0), (9, 0))),
        m.MainName(b"trivmc-anchor"),
        m.MainUuid(bytes(range(16))),
        m.VmcCompressedData(1, 8, b"\x80abcdefgh"),
        m.PortInit(b"org.trivmc.test.0", True),
        m.VmcMigrateDataHeader(True, 5, 6, 3, 1, pending=b"abc"),
    ]
    for value in values:
        out[f"codec-{type(value).__name__}"] = codec(type(value), value.encode())  # type: ignore[attr-defined]
    return out
