"""Channel harness: a whole server VMC channel (`VmcChannel` + `VmcChannelClient`: char
device, QEMU-style frontend, echo or null backend) or the main channel
(`MainChannelClient`) served over a trio in-memory stream to a peer that sends
arbitrary message streams.

Input: u8 flags (channel kind, header, LZ4, `initial` bytes, pings, backend, waits),
u8 bound, cuts, then records: messages (typed, raw-typed, valid COMPRESSED_DATA,
PORT_EVENT...) framed with `MessageEncoder`, raw garbage, and points where the peer
waits until the server is idle. The peer sends everything in pieces, then ends its
stream. Asserted:

- only `ProtocolError`, `trio.BrokenResourceError` and `trio.ClosedResourceError`
  leave the channel (a deadlock fails at the virtual deadline);
- afterwards the device is idle: no client, every token back, no buffer outstanding,
  and the channel client has nothing queued;
- what the server wrote is well framed: a VMC channel sends PORT_INIT first (port and
  webdav), then only DATA, COMPRESSED_DATA (only to a peer that took LZ4; each
  decompresses to its stated size), PORT_EVENT and PING; with the echo backend the
  data that came back is a prefix of the data sent (DATA and decompressed
  COMPRESSED_DATA); the main channel sends MAIN_INIT first, then CHANNELS_LIST (at
  most one per ATTACH_CHANNELS) and PINGs.

Server objects are built in ONE place, `build_server()`: their constructors are being
changed (byte budgets, ping timeouts); adapt it there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import lz4.block
import trio
import trio.testing

from trivmc.backends import EchoBackend, NullBackend
from trivmc.backends.base import Backend
from trivmc.protocol import (
    ChannelType,
    MainChannelsList,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgcVmc,
    MsgMain,
    MsgVmc,
    ProtocolError,
    decompress_body,
)
from trivmc.server import (
    ChannelClient,
    ChannelOptions,
    MainChannelClient,
    VmcChannel,
    VmcChannelClient,
)
from trivmc.server.channel import PeerNotReading, PeerUnresponsive

from .fuzzdata import FuzzInput, FuzzOutput, split
from .triodriver import run_scenario

MAX_LEN = 8192

ALLOWED = (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError)
KINDS = (ChannelType.PORT, ChannelType.USBREDIR, ChannelType.WEBDAV, ChannelType.MAIN)
PORT_NAME = "org.trivmc.fuzz.0"
SESSION_ID = 0x331DD668
HOSTED = [(int(ChannelType.PORT), 0)]
BOUNDS = (64 * 1024, 4096, 300, 16 * 1024 * 1024)
# from the same byte's upper bits (index 0: the server's defaults, as older seeds had)
BUDGETS = (4 * 1024 * 1024, 1, 700, 64 * 1024)  # client->device byte budget
QUEUES = (2 * 1024 * 1024, 200, 3000, 64 * 1024)  # outgoing queue bound
# a clean stream may still end for these: the peer here reads only when scheduled and
# never answers PINGs
BOUNDED = (PeerNotReading, PeerUnresponsive)
# client message types worth trying: VMC, common, main, unknown
TYPES = (101, 102, 201, 1, 2, 3, 4, 5, 6, 104, 105, 106, 107, 108, 112, 0, 7, 999)
COMMON = (1, 2, 3, 6)  # ACK_SYNC, ACK, PONG, DISCONNECTING

F_KIND = 3
F_MINI = 4
F_LZ4 = 8
F_INITIAL = 16  # the first piece arrives as the link's trailing bytes
F_PING = 32
F_NULL = 64  # the null backend instead of echo
F_WAIT = 128  # wait until the server is idle after each piece

R_TYPED, R_RAW_TYPE, R_COMPRESSED, R_GARBAGE, R_PORT_EVENT, R_DATA, R_COMMON, R_WAIT = range(8)
LZ4_HEAD = struct.Struct("<BI")
MAX_PIECES = 32  # the rest of the stream goes in the last piece


@dataclass
class Built:
    """The server side of one channel connection."""

    client: ChannelClient
    channel: VmcChannel | None  # None for the main channel


def build_server(
    kind: ChannelType,
    stream: trio.abc.Stream,
    *,
    mini_header: bool,
    peer_lz4: bool,
    max_message: int,
    ping_interval: float | None,
    backend: Backend,
    byte_budget: int = BUDGETS[0],
    max_queued: int = QUEUES[0],
    ping_misses: int = 3,
) -> Built:
    """Construct the server objects for one connection (the only place that does)."""
    opts = ChannelOptions(
        "fuzz",
        mini_header,
        max_message,
        False,
        ping_interval=ping_interval,
        max_queued=max_queued,
        ping_misses=ping_misses,
    )
    if kind == ChannelType.MAIN:
        client = MainChannelClient(stream, opts, session_id=SESSION_ID, channels=lambda: HOSTED)
        return Built(client, None)
    name = PORT_NAME if kind == ChannelType.PORT else None
    channel = VmcChannel(kind, 0, backend, name, byte_budget=byte_budget)
    return Built(VmcChannelClient(stream, opts, channel=channel, peer_lz4=peer_lz4), channel)


@dataclass
class _Plan:
    kind: ChannelType
    mini: bool
    peer_lz4: bool
    ping: bool
    echo: bool
    bound: int
    budget: int = BUDGETS[0]
    queue: int = QUEUES[0]
    misses: int = 3
    initial: bytes = b""
    pieces: list[bytes] = field(default_factory=list)
    waits: set[int] = field(default_factory=set)  # the peer waits after these pieces
    sent_data: bytearray = field(default_factory=bytearray)  # what reaches the device
    clean: bool = True  # only well-formed, bounded messages that the channel takes
    garbage: bool = False
    attaches: int = 0  # ATTACH_CHANNELS messages sent (main channel)


def _takes(kind: ChannelType, mtype: int, body: bytes) -> bool:
    """Whether a channel of `kind` serves this (bounded) message without an error."""
    if mtype in (MsgcCommon.ACK_SYNC, MsgcCommon.PONG):
        return len(body) >= (4 if mtype == MsgcCommon.ACK_SYNC else 12)
    if mtype in (MsgcCommon.ACK, MsgcCommon.DISCONNECTING):
        return True
    if kind == ChannelType.MAIN:
        return mtype in set(MsgcMain)
    if mtype == MsgcVmc.PORT_EVENT:
        return len(body) >= 1
    return mtype == MsgcVmc.DATA  # COMPRESSED_DATA is checked by the caller


def _plan(data: bytes) -> _Plan:
    inp = FuzzInput(data)
    flags = inp.u8()
    plan = _Plan(
        kind=KINDS[flags & F_KIND],
        mini=bool(flags & F_MINI),
        peer_lz4=bool(flags & F_LZ4),
        ping=bool(flags & F_PING),
        echo=not flags & F_NULL,
        bound=0,
    )
    sizes = inp.u8()
    plan.bound = BOUNDS[sizes % len(BOUNDS)]
    plan.budget = BUDGETS[(sizes >> 2) % len(BUDGETS)]
    plan.queue = QUEUES[(sizes >> 4) % len(QUEUES)]
    plan.misses = 1 + (sizes >> 6) % 3
    cuts = inp.cuts()
    enc = MessageEncoder(plan.mini)
    wire = bytearray()
    vmc = plan.kind != ChannelType.MAIN

    def message(mtype: int, body: bytes) -> None:
        wire.extend(enc.encode(mtype, body))
        if not vmc and mtype == MsgcMain.ATTACH_CHANNELS:
            plan.attaches += 1
        if len(body) > plan.bound:
            plan.clean = False
        elif vmc and mtype == MsgcVmc.COMPRESSED_DATA:
            try:
                plan.sent_data += decompress_body(body, plan.bound)
            except ProtocolError:
                plan.clean = False
        elif not _takes(plan.kind, mtype, body):
            plan.clean = False
        elif vmc and mtype == MsgcVmc.DATA:
            plan.sent_data += body

    def cut() -> None:
        room = MAX_PIECES - len(plan.pieces)
        if room > 0:
            plan.pieces.extend(split(bytes(wire), cuts, room))
        elif wire:
            plan.pieces[-1] += wire
        wire.clear()

    while inp.remaining():
        op = inp.u8()
        kind = op & 7
        if kind == R_TYPED:
            message(TYPES[inp.u8() % len(TYPES)], inp.blob())
        elif kind == R_RAW_TYPE:
            message(inp.u16(), inp.blob())
        elif kind in (R_COMPRESSED, R_DATA):
            payload = inp.blob()
            if op & 0x80:
                payload *= inp.u8() + 1
            if kind == R_DATA:
                message(MsgVmc.DATA, payload)
            else:
                block = lz4.block.compress(payload, store_size=False)
                message(MsgVmc.COMPRESSED_DATA, LZ4_HEAD.pack(1, len(payload)) + block)
        elif kind == R_GARBAGE:
            wire.extend(inp.take(inp.u8()))
            plan.garbage = True
            plan.clean = False
        elif kind == R_PORT_EVENT:
            message(MsgVmc.PORT_EVENT, inp.take(1))
        elif kind == R_COMMON:
            message(COMMON[inp.u8() % len(COMMON)], inp.take(inp.u8() % 32))
        else:
            cut()
            if plan.pieces:
                plan.waits.add(len(plan.pieces) - 1)
    cut()
    if flags & F_WAIT:
        plan.waits = set(range(len(plan.pieces)))
    if flags & F_INITIAL and plan.pieces:
        plan.initial = plan.pieces.pop(0)
        plan.waits = {i - 1 for i in plan.waits if i}
    return plan


def fuzz_one(data: bytes) -> None:
    plan = _plan(data)
    run_scenario(lambda: _scenario(plan))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _scenario(plan: _Plan) -> None:
    ours, peer = trio.testing.memory_stream_pair()
    backend: Backend = EchoBackend() if plan.echo else NullBackend()
    built = build_server(
        plan.kind,
        ours,
        mini_header=plan.mini,
        peer_lz4=plan.peer_lz4,
        max_message=plan.bound,
        ping_interval=1.0 if plan.ping else None,
        backend=backend,
        byte_budget=plan.budget,
        max_queued=plan.queue,
        ping_misses=plan.misses,
    )
    written = bytearray()

    async def drain() -> None:
        try:
            while data := await peer.receive_some():
                written.extend(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def send() -> None:
        try:
            for i, piece in enumerate(plan.pieces):
                await peer.send_all(piece)
                if i in plan.waits:
                    await trio.testing.wait_all_tasks_blocked()
                    if built.channel is not None:  # the budget plus one message at most
                        held = built.channel.device.buffered_bytes
                        assert held <= plan.budget + plan.bound, (held, plan.budget)
            await peer.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        if built.channel is not None:
            nursery.start_soon(built.channel.run)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(drain)
        nursery.start_soon(send)
        error: BaseException | None = None
        try:
            if built.channel is not None:
                assert isinstance(built.client, VmcChannelClient)
                await built.channel.serve_client(built.client, plan.initial)
            else:
                await built.client.run(plan.initial)
        except BaseException as e:
            if any(not isinstance(leaf, ALLOWED) for leaf in _leaves(e)):
                raise
            error = e
        finally:
            await ours.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert built.client.queued_bytes == 0, built.client.queued_bytes
        if built.channel is not None:
            device = built.channel.device
            assert device.client is None and built.channel.client is None
            assert device.tokens_free == device.total_tokens, device.tokens_free
            assert device.idle, device.outstanding_buffers
            assert device.buffered_bytes == 0, device.buffered_bytes
        nursery.cancel_scope.cancel()
    if error is not None and all(isinstance(leaf, BOUNDED) for leaf in _leaves(error)):
        error = None  # a bound the peer crossed, not a fault of the message stream
    if plan.clean and error is not None:
        raise AssertionError(f"a clean message stream failed: {error!r}")
    _check_written(plan, bytes(written))


def _check_written(plan: _Plan, written: bytes) -> None:
    decoder = MessageDecoder(plan.mini, 1 << 25)
    messages = [(m.type, bytes(m.body)) for m in decoder.feed(written)]
    types = [t for t, _ in messages]
    if plan.kind == ChannelType.MAIN:
        assert not types or types[0] == MsgMain.INIT, types  # empty: closed at once
        # a main channel never migrating answers a CONNECTED with CANCEL, DO_SEAMLESS
        # with NACK (main_channel.py)
        answers = {MsgMain.MIGRATE_CANCEL, MsgMain.MIGRATE_DST_SEAMLESS_NACK}
        assert set(types[1:]) <= {MsgMain.CHANNELS_LIST, MsgCommon.PING, *answers}, types
        lists = [body for mtype, body in messages if mtype == MsgMain.CHANNELS_LIST]
        assert all(MainChannelsList.decode(body).channels == tuple(HOSTED) for body in lists)
        if not plan.garbage:  # garbage may hold ATTACH_CHANNELS too
            assert len(lists) <= plan.attaches, (len(lists), plan.attaches)
        return
    if plan.kind in (ChannelType.PORT, ChannelType.WEBDAV):
        assert not types or types[0] == MsgVmc.PORT_INIT, types
        messages = messages[1:]
    echoed = bytearray()
    for mtype, body in messages:
        if mtype == MsgVmc.DATA:
            echoed += body
        elif mtype == MsgVmc.COMPRESSED_DATA:
            assert plan.peer_lz4, "COMPRESSED_DATA to a peer without LZ4"
            echoed += decompress_body(body, 1 << 25)
        else:
            assert mtype in (MsgVmc.PORT_EVENT, MsgCommon.PING), mtype
    if plan.echo:
        if not plan.garbage:  # garbage may hold DATA messages too
            assert plan.sent_data.startswith(echoed), "the echo is not what was sent"
    else:
        assert not echoed, "the null backend sent data"


# ---- seeds -------------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    def head(flags: int, bound: int, cuts: list[int]) -> FuzzOutput:
        return FuzzOutput().u8(flags).u8(bound).cuts(cuts)

    hello = b"hello from spice-gtk"
    text = b"0123456789abcdef" * 8
    port = head(F_MINI | F_LZ4, 0, []).u8(R_DATA).blob(hello).u8(R_PORT_EVENT).raw(b"\x02")
    return {
        "port-gtk": port.bytes(),
        "port-cut-wait": head(F_MINI | F_WAIT, 0, [1, 7, 30])
        .u8(R_DATA).blob(hello).u8(R_WAIT).u8(R_DATA | 0x80).blob(text).u8(40).bytes(),
        "port-lz4": head(F_MINI | F_LZ4 | F_INITIAL, 0, [100])
        .u8(R_COMPRESSED | 0x80).blob(text).u8(20).u8(R_DATA).blob(hello).bytes(),
        "usbredir-full-header": head(1, 0, [18]).u8(R_DATA).blob(hello)
        .u8(R_COMPRESSED).blob(text).bytes(),
        "webdav-null": head(2 | F_MINI | F_NULL, 0, []).u8(R_DATA).blob(hello).bytes(),
        "port-too-large": head(F_MINI, 2, []).u8(R_DATA).blob(bytes(400)).bytes(),
        "port-bad-lz4": head(F_MINI | F_LZ4, 0, [])
        .u8(R_TYPED).u8(TYPES.index(102)).blob(b"\x01\x10\x00\x00\x00garbage").bytes(),
        "port-common": head(F_MINI | F_PING, 0, []).u8(R_COMMON).u8(2).u8(12)
        .raw(bytes(12)).u8(R_COMMON).u8(1).u8(0).u8(R_DATA).blob(hello).bytes(),
        "port-migrate": head(F_MINI, 0, []).u8(R_TYPED).u8(TYPES.index(5)).blob(b"").bytes(),
        "port-garbage": head(F_MINI, 0, [3]).u8(R_GARBAGE).u8(9).raw(b"\xff" * 9).bytes(),
        "main-attach": head(3 | F_MINI, 0, [])
        .u8(R_TYPED).u8(TYPES.index(104)).blob(b"").u8(R_TYPED).u8(TYPES.index(105))
        .blob(b"\x02\x00").bytes(),
        "main-attach-wait": head(3 | F_MINI | F_WAIT, 0, [])
        .u8(R_TYPED).u8(TYPES.index(104)).blob(b"").u8(R_WAIT)
        .u8(R_COMMON).u8(2).u8(12).raw(bytes(12)).bytes(),
        "main-unknown": head(3, 0, [5]).u8(R_RAW_TYPE).u16(150).blob(b"x").bytes(),
    }  # fmt: skip
