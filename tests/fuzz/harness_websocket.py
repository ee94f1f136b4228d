"""WebSocket harness: `accept_websocket` + `WebSocketStream` (server side) and
`connect_websocket` (client side) over trio in-memory streams, the peer sending
arbitrary bytes or well-formed frames built from the input, in arbitrary chunks.

Input: u8 flags (side, raw or structured, request/response variant, close or EOF,
garbage after the frames, a reply sent back, `initial` bytes), u8 `max_bytes` for
`receive_some`, cuts, then raw bytes or frame records. Asserted:

- only `WebSocketError`/`ProtocolError`, `trio.BrokenResourceError` and
  `trio.ClosedResourceError` come out (a deadlock fails at the virtual deadline);
- well-formed frames (binary messages, fragmented or not, with pings and pongs between
  them, then a close frame or the end of the stream): no error at all; the payloads
  come out unchanged and in order, no read longer than `max_bytes`; `close_code` is the
  peer's code (1006 without a close frame); what our side wrote parses: the 101 answer
  (with the `binary` subprotocol exactly when offered) or the request, each ping
  answered by a pong with its payload in order, the reply we sent, a final close frame;
- a text message fails with `WebSocketError` and a close frame 1003;
- with garbage after well-formed frames, what came out is consistent with their
  payloads (a prefix of them, or them followed by more).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import trio
import trio.testing

from trivmc.protocol import ProtocolError
from trivmc.transport import WebSocketError, WebSocketStream, accept_websocket, connect_websocket

from .fuzzdata import FuzzInput, FuzzOutput, split
from .triodriver import run_scenario

MAX_LEN = 8192

F_CLIENT = 1  # test connect_websocket (else accept_websocket)
F_STRUCTURED = 2  # frame records (else raw bytes)
F_VARIANT = 4 | 8  # request (server side) or response (client side) variant
F_CLOSE = 16  # the peer ends with a close frame (else just the end of the stream)
F_GARBAGE = 32  # raw bytes after the records
F_REPLY = 64  # our side sends b"reply" once open
F_INITIAL = 128  # server side: part of the request is passed as `initial`

ALLOWED = (WebSocketError, ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"
REPLY = b"reply"
CLOSE_CODES = (1000, 1001, 1003, 1008, 1011, 3000, 4999, None)
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
REC_BINARY, REC_PING, REC_PONG, REC_TEXT, REC_SPLIT_PING = range(5)
MAX_PIECES = 32  # per send: the rest goes in the last piece
PROTOCOL_HEADERS = (b"binary", None, b"base64, binary", b"base64")


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def upgrade_request(variant: int) -> bytes:
    protocol = PROTOCOL_HEADERS[variant]
    lines = [
        b"GET /spice HTTP/1.1",
        b"Host: 127.0.0.1:5930",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
    ]
    if protocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + protocol)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def upgrade_response(key: bytes, variant: int) -> bytes:
    """0: 101 with `binary`, 1: 101 without a subprotocol, 2: 403, 3: a wrong token."""
    if variant == 2:
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    token = accept_token(key if variant != 3 else key + b"x")
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + token,
    ]
    if variant == 0:
        lines.append(b"Sec-WebSocket-Protocol: binary")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _xor(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    pad = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One RFC 6455 frame (masked when `mask` is given, as a client must)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += n.to_bytes(8, "big")
    if mask:
        return bytes(head) + mask + _xor(payload, mask)
    return bytes(head) + payload


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """(fin, opcode, payload) of each frame; AssertionError on a cut or bad frame."""
    out: list[tuple[bool, int, bytes]] = []
    off = 0
    while off < len(data):
        assert len(data) - off >= 2, "cut frame header"
        b0, b1 = data[off], data[off + 1]
        assert not b0 & 0x70, "reserved bits set"
        off += 2
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(data[off : off + 2], "big")
            off += 2
        elif n == 127:
            n = int.from_bytes(data[off : off + 8], "big")
            off += 8
        mask = None
        if b1 & 0x80:
            mask = data[off : off + 4]
            off += 4
        payload = data[off : off + n]
        assert len(payload) == n, "cut frame payload"
        off += n
        out.append((bool(b0 & 0x80), b0 & 0x0F, _xor(payload, mask) if mask else payload))
    return out


@dataclass
class _Plan:
    """The peer's bytes and what a correct implementation does with them."""

    client_side: bool
    variant: int
    max_bytes: int | None
    reply: bool
    cuts: list[int]
    handshake: bytes = b""  # server side: the request, less `initial`
    initial: bytes = b""  # server side: what the server's sniffing read already
    frames: bytes = b""
    expect_data: bytes = b""
    expect_pongs: list[bytes] = field(default_factory=list)
    close_code: int | None = 1006  # None: a close frame without a code (1005)
    text: bool = False  # a text message ends the well-formed part
    garbage: bytes = b""
    raw: bool = False
    frames_after_handshake: bool = True  # server side: wait for the 101 first

    @property
    def opens(self) -> bool:
        """The handshake is one that succeeds."""
        return not self.raw and (self.variant in (0, 1) if self.client_side else True)

    @property
    def well_formed(self) -> bool:
        return self.opens and not self.garbage and not self.text


def _printable(data: bytes) -> bytes:
    """ASCII text (valid UTF-8: wsproto closes with 1007 on bad text)."""
    return bytes(32 + b % 95 for b in data)


def _records(inp: FuzzInput, plan: _Plan, flags: int) -> None:
    mask = None if plan.client_side else MASK  # what the peer must do
    out = bytearray()
    for _ in range(inp.u8() % 16):
        op = inp.u8()
        kind = (op & 0x0F) % 5
        if kind in (REC_BINARY, REC_SPLIT_PING):
            payload = inp.blob()
            if op & 0x80:
                payload *= inp.u8() + 1
            pieces = split(payload, [max(1, len(payload) // ((op >> 4 & 3) + 1))]) or [b""]
            for i, piece in enumerate(pieces):
                fin = i == len(pieces) - 1
                out += frame(OP_BINARY if i == 0 else OP_CONT, piece, fin=fin, mask=mask)
                if kind == REC_SPLIT_PING and not fin:
                    out += frame(OP_PING, b"mid", mask=mask)
                    plan.expect_pongs.append(b"mid")
            plan.expect_data += payload
        elif kind == REC_PING:
            payload = inp.take(inp.u8() % 126)
            out += frame(OP_PING, payload, mask=mask)
            plan.expect_pongs.append(payload)
        elif kind == REC_PONG:
            out += frame(OP_PONG, inp.take(inp.u8() % 126), mask=mask)
        else:
            out += frame(OP_TEXT, _printable(inp.take(inp.u8())), mask=mask)
            plan.text = True
            break
    if flags & F_CLOSE and not plan.text:
        code = CLOSE_CODES[inp.u8() % len(CLOSE_CODES)]
        reason = _printable(inp.take(inp.u8() % 32))
        body = b"" if code is None else code.to_bytes(2, "big") + reason
        out += frame(OP_CLOSE, body, mask=mask)
        plan.close_code = code
    plan.frames = bytes(out)


def _plan(data: bytes) -> _Plan:
    inp = FuzzInput(data)
    flags = inp.u8()
    max_bytes = inp.u8()
    plan = _Plan(
        client_side=bool(flags & F_CLIENT),
        variant=(flags & F_VARIANT) >> 2,
        max_bytes=max_bytes or None,
        reply=bool(flags & F_REPLY),
        cuts=inp.cuts(),
    )
    if not flags & F_STRUCTURED:
        plan.raw = True
        plan.frames_after_handshake = False
        cut = inp.u8() if not plan.client_side and flags & F_INITIAL else 0
        data = inp.rest()
        plan.initial, plan.frames = data[:cut], data[cut:]
        return plan
    if not plan.client_side:
        request = upgrade_request(plan.variant)
        cut = inp.u8() % len(request) if flags & F_INITIAL else 0
        plan.initial, plan.handshake = request[:cut], request[cut:]
    _records(inp, plan, flags)
    if flags & F_GARBAGE:
        plan.garbage = inp.rest()
    return plan


def fuzz_one(data: bytes) -> None:
    plan = _plan(data)
    run_scenario(lambda: _scenario(plan))


@dataclass
class _Outcome:
    error: BaseException | None = None
    received: bytearray = field(default_factory=bytearray)
    written: bytearray = field(default_factory=bytearray)  # what our side sent
    close_code: int | None = None
    reply_refused: bool = False  # the peer had closed before our reply


async def _scenario(plan: _Plan) -> None:
    ours, peer = trio.testing.memory_stream_pair()
    outcome = _Outcome()
    handshake_seen = trio.Event()

    async def collect() -> None:  # everything our side writes
        try:
            while data := await peer.receive_some():
                outcome.written += data
                if b"\r\n\r\n" in outcome.written:
                    handshake_seen.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        handshake_seen.set()

    async def send(data: bytes) -> None:
        for piece in split(data, plan.cuts, MAX_PIECES):
            await peer.send_all(piece)

    async def play_server() -> None:  # the peer of connect_websocket
        await handshake_seen.wait()
        request = bytes(outcome.written)
        key = b""
        for line in request.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        if plan.raw:
            await send(plan.frames)
        else:
            await send(upgrade_response(key, plan.variant) + plan.frames + plan.garbage)

    async def play_client() -> None:  # the peer of accept_websocket
        await send(plan.handshake)
        if plan.frames_after_handshake:
            await handshake_seen.wait()  # RFC 6455 clients wait for the 101
        await send(plan.frames + plan.garbage)

    async def peer_side() -> None:
        try:
            await (play_server() if plan.client_side else play_client())
            await peer.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        nursery.start_soon(peer_side)
        try:
            await _our_side(plan, ours, outcome)
        except ALLOWED as e:
            outcome.error = e
        finally:
            await ours.aclose()
    _check(plan, outcome)


async def _our_side(plan: _Plan, transport: trio.abc.Stream, outcome: _Outcome) -> None:
    stream: WebSocketStream
    if plan.client_side:
        stream = await connect_websocket(transport, "127.0.0.1:5930", "/spice")
    else:
        stream = await accept_websocket(transport, plan.initial)
    if plan.reply:
        try:
            await stream.send_all(REPLY)
        except trio.BrokenResourceError:
            # only once the peer's close frame came (with the 101: client side)
            assert stream.close_code is not None and stream.close_code != 1006
            outcome.reply_refused = True
    while data := await stream.receive_some(plan.max_bytes):
        assert plan.max_bytes is None or len(data) <= plan.max_bytes
        outcome.received += data
    outcome.close_code = stream.close_code
    await stream.aclose()


def _check(plan: _Plan, outcome: _Outcome) -> None:
    got, want = bytes(outcome.received), plan.expect_data
    if plan.raw:
        return
    if not plan.well_formed:
        if plan.opens and plan.text and not plan.garbage:
            assert isinstance(outcome.error, WebSocketError), outcome.error
            frames = parse_frames(bytes(outcome.written).partition(b"\r\n\r\n")[2])
            assert frames and frames[-1][1] == OP_CLOSE and frames[-1][2][:2] == b"\x03\xeb"
        assert got[: len(want)] == want[: len(got)], "payload bytes changed"
        return
    if outcome.error is not None:
        raise AssertionError(f"well-formed frames failed: {outcome.error!r}")
    assert got == want, (len(got), len(want))
    expected_code = 1005 if plan.close_code is None else plan.close_code
    assert outcome.close_code == expected_code, (outcome.close_code, expected_code)
    head, sep, rest = bytes(outcome.written).partition(b"\r\n\r\n")
    assert sep, "no HTTP head written"
    if plan.client_side:
        assert head.startswith(b"GET /spice HTTP/1.1\r\n")
        assert b"\r\nsec-websocket-protocol: binary" in head.lower()
    else:
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nsec-websocket-accept: " + accept_token(KEY).lower() in head.lower()
        offered = plan.variant != 1 and PROTOCOL_HEADERS[plan.variant] != b"base64"
        assert (b"\r\nsec-websocket-protocol: binary" in head.lower()) == offered
    frames = parse_frames(rest)
    assert all(fin for fin, _, _ in frames)
    assert [p for _, op, p in frames if op == OP_PONG] == plan.expect_pongs
    replied = plan.reply and not outcome.reply_refused
    assert b"".join(p for _, op, p in frames if op == OP_BINARY) == (REPLY if replied else b"")
    assert frames and frames[-1][1] == OP_CLOSE, "no final close frame"
    if plan.close_code is not None:  # the peer's code echoed, or ours (1000) after EOF
        ours = 1000 if plan.close_code == 1006 else plan.close_code
        assert frames[-1][2][:2] == ours.to_bytes(2, "big")


# ---- seeds -------------------------------------------------------------------------


def _structured(flags: int, max_bytes: int, cuts: list[int]) -> FuzzOutput:
    return FuzzOutput().u8(F_STRUCTURED | flags).u8(max_bytes).cuts(cuts)


def seeds() -> dict[str, bytes]:
    link = bytes.fromhex("5245445102000000020000001a000000000000000100010000000100000012000000")

    def records(out: FuzzOutput) -> FuzzOutput:
        out.u8(5)  # five records
        out.u8(REC_BINARY).blob(link)
        out.u8(REC_PING).u8(4).raw(b"ping")
        out.u8(REC_BINARY | 0x10).blob(b"split in two")
        out.u8(REC_SPLIT_PING | 0x20).blob(b"three parts with a ping")
        out.u8(REC_PONG).u8(0)
        return out

    big = FuzzOutput().u8(1).u8(REC_BINARY | 0x80).blob(bytes(range(200))).u8(255)
    return {
        "server-binary-close": records(_structured(F_CLOSE | F_REPLY, 0, [])).u8(0).u8(3)
        .raw(b"bye").bytes(),
        "server-cut-eof": records(_structured(F_INITIAL, 7, [1, 9, 3])).u8(4).bytes(),
        "server-no-protocol": records(_structured(1 << 2 | F_CLOSE, 0, [50])).u8(7).u8(0)
        .bytes(),
        "server-text": _structured(0, 0, []).u8(1).u8(REC_TEXT).u8(2).raw(b"hi").bytes(),
        "server-garbage": records(_structured(F_GARBAGE, 0, [])).raw(b"\x82\x05hello").bytes(),
        "server-big-frame": FuzzOutput().u8(F_STRUCTURED).u8(0).cuts([200]).raw(big.bytes())
        .bytes(),
        "server-raw-request": FuzzOutput().u8(F_INITIAL).u8(0).cuts([]).u8(4)
        .raw(upgrade_request(0) + frame(OP_BINARY, b"lost", mask=MASK)).bytes(),
        "client-binary-close": records(_structured(F_CLIENT | F_CLOSE, 0, [])).u8(1).u8(0)
        .bytes(),
        "client-cut-eof": records(_structured(F_CLIENT | 1 << 2 | F_REPLY, 3, [2, 5])).bytes(),
        "client-reject": _structured(F_CLIENT | 2 << 2, 0, []).u8(0).bytes(),
        "client-bad-token": _structured(F_CLIENT | 3 << 2, 0, []).u8(0).bytes(),
        "client-raw": FuzzOutput().u8(F_CLIENT).u8(0).cuts([])
        .raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").bytes(),
        # bugs the fuzzer found: accept_websocket(initial=b"") and a non-ASCII Host;
        # a non-ASCII Connection header in the response to connect_websocket
        "regress-server-non-ascii-host": FuzzOutput().u8(0).u8(0).cuts([])
        .raw(upgrade_request(0).replace(b"Host: ", b"Host: \xda")).bytes(),
        "regress-client-non-ascii-header": FuzzOutput().u8(F_CLIENT).u8(0).cuts([])
        .raw(upgrade_response(b"k", 1).replace(b"Connection: ", b"Connection: \xb1")).bytes(),
    }  # fmt: skip
