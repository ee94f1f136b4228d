"""The session boundary under random schedules: a real `VmcChannel` (its `CharDevice`,
`SpiceChardev`, `VmcChannelClient`s and `serve_client` path) over a `ConnectingBackend`
whose peers are in-memory streams the test scripts: a peer stalls, resumes, resets
(RST), half-closes (FIN) and talks at random points, connects fail or are slow, and
clients come and go (leaving by a server-side disconnect or by closing their side).

Checked after every schedule, per client session:

- the boundary rule: every byte a peer got was sent by the client of the session the
  peer was opened for, in order, never twice: each peer of a session got one
  contiguous range of what the device wrote for that session, after the previous
  peer's range (the gap between them is what a reset peer lost); a peer opened for a
  client that has left gets nothing;
- the accounting, exactly: bytes the device took = bytes it wrote + bytes it dropped
  at the boundary; bytes it wrote = bytes the peers got + bytes the backend counted
  dropped - the part of an interrupted `send_all` a peer had already taken (the
  backend cannot know it and counts the whole write dropped); the channel's
  `bytes_dropped` = the device's boundary drop + what the backend dropped after the
  client left;
- the deadline: a boundary never outlasts the drain time; a client that left with a
  working peer (not stalled, reset or closed before its boundary ended) loses nothing;
- device -> client: a client is shown only data from its own session's peers, per
  peer a prefix of what that peer said, peer after peer (a client may stop reading, so
  the device and the frontend hold its peer's data when it leaves);
- PORT_INIT says the port is closed (no peer survives a boundary) and the port events
  alternate OPENED / CLOSED;
- at the end everything is idle: every token back, nothing buffered in the device, the
  frontend or the backend, no client, no peer left open.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trivmc.backends.stream import ConnectingBackend
from trivmc.chardev import CharDevice, ChrEvent, DeviceInstance
from trivmc.chardev.buffer import WriteBuffer
from trivmc.chardev.device import BYTE_BUDGET, CLIENT_QUEUE_LIMIT, VMC_TOKENS
from trivmc.protocol import (
    ChannelType,
    MessageDecoder,
    MessageEncoder,
    MsgcVmc,
    MsgVmc,
    PortEvent,
    PortEventMsg,
    PortInit,
    compress_body,
    decompress_body,
)
from trivmc.server import ChannelOptions, VmcChannel, VmcChannelClient

PORT = "org.trivmc.boundary.0"
MAX_MESSAGE = 1 << 20
JOIN_PATIENCE = 1.0  # a client that closed its side gets this long to finish, then it is cut


class Tagged:
    """An endless byte stream: every byte carries `tag % 16` in its high nibble and a
    pseudo-random low nibble, so a byte says whose it is and a range is found by content."""

    def __init__(self, tag: int, seed: int) -> None:
        self._rng = random.Random(seed)
        self._table = bytes(((tag % 16) << 4) | (i & 15) for i in range(256))

    def take(self, n: int) -> bytes:
        return self._rng.randbytes(n).translate(self._table)


class Peer(trio.abc.Stream):
    """The backend's far side, scripted by the test. It takes `chunk` bytes per
    scheduling point unless stalled, writes what `talk()` queues, and ends with a reset
    (`rst()`: both directions raise BrokenResourceError) or a half-close (`fin()`: it
    reads on, its own side ends)."""

    def __init__(self, pid: int, session: int, chunk: int, stalled: bool) -> None:
        self.pid = pid
        self.session = session  # the backend's client session it was opened for
        self.chunk = chunk
        self.stalled = stalled
        self.received = bytearray()
        self.interrupted = 0  # bytes taken by a send_all that then raised (or was cancelled)
        self.said = bytearray()  # all it wrote toward the client
        self.limit: int | None = None  # it stalls once it got this many bytes
        self.bridged = False
        self.reset = False
        self.finished = False
        self.closed = False
        self._source = Tagged(pid, 10_000 + pid)
        self._outgoing = bytearray()
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("peer stream closed")
        if self.reset:
            raise trio.BrokenResourceError("connection reset by peer")

    # ---- the test's controls ---------------------------------------------------

    def stall(self) -> None:
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False
        self._notify()

    def rst(self) -> None:
        self.reset = True
        self._notify()

    def fin(self) -> None:
        self.finished = True
        self._notify()

    def talk(self, n: int) -> None:
        if self.closed or self.reset or self.finished:
            return
        data = self._source.take(n)
        self.said += data
        self._outgoing += data
        self._notify()

    # ---- trio.abc.Stream -------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        taken = 0
        try:
            await trio.lowlevel.checkpoint()
            with memoryview(data) as view:
                while taken < len(view):
                    self._check()
                    room = len(view) - taken
                    if self.limit is not None:
                        room = min(room, self.limit - len(self.received))
                    if self.stalled or room <= 0:
                        await self._changed.wait()
                        continue
                    n = min(self.chunk, room)
                    self.received += view[taken : taken + n]
                    taken += n
                    if taken < len(view):
                        await trio.lowlevel.checkpoint()
        except BaseException:
            self.interrupted += taken
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            self._check()
            if self._outgoing:
                n = len(self._outgoing) if max_bytes is None else max_bytes
                out = bytes(self._outgoing[:n])
                del self._outgoing[:n]
                return out
            if self.finished:
                return b""
            await self._changed.wait()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._notify()
        await trio.lowlevel.checkpoint()


@dataclass(frozen=True)
class Mark:
    """The byte counters at one instant."""

    written: int  # device: written into the frontend
    dev_dropped: int  # device: dropped by reset() at a boundary
    chan_dropped: int  # channel: dropped at session boundaries
    be_dropped: int  # backend: dropped for a peer that went or a session that ended


@dataclass
class SessionLog:
    start: Mark  # at the client's attach (OPENED)
    closed_at: int | None = None  # the backend's `dropped` when the client left (CLOSED)
    left_at: float | None = None  # (trio time) when it left
    over_at: float | None = None  # when the backend ended its session (the boundary)
    end: Mark | None = None  # once its boundary is over (the next OPENED, or the end)


class ScriptedBackend(ConnectingBackend):
    """A connecting backend whose `open_peer` makes a `Peer` (or fails, or takes a
    while, as the test says); it records what the frontend hands it per session and the
    counters at each client's attach and departure."""

    name = "scripted"

    def __init__(self, reconnect: float, drain: float, chunks: list[int]) -> None:
        super().__init__(reconnect, drain)
        self.channel: VmcChannel | None = None
        self.peers: list[Peer] = []
        self.chunks = chunks
        self.refuse = 0  # the next connects that fail
        self.delay = 0.0  # how long the next connect takes
        self.stall_new = False  # new peers start stalled
        self.opening = 0
        self._open_ended = trio.Event()
        self.reads: defaultdict[int, bytearray] = defaultdict(bytearray)
        self.log: dict[int, SessionLog] = {}
        self._news = trio.Event()  # a client came or went, or a peer was bridged

    def _notify(self) -> None:
        self._news.set()
        self._news = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._news.wait()

    def mark(self) -> Mark:
        assert self.channel is not None
        stats = self.channel.device.stats
        return Mark(stats.written, stats.dropped, self.channel.bytes_dropped, self.dropped)

    async def open_peer(self) -> trio.abc.Stream:
        session = self.session
        delay, self.delay = self.delay, 0.0
        self.opening += 1
        try:
            await trio.sleep(delay)  # a connect that takes this long (0: one checkpoint)
            if self.refuse:
                self.refuse -= 1
                raise ConnectionRefusedError("connection refused (scripted)")
            pid = len(self.peers)
            peer = Peer(pid, session, self.chunks[pid % len(self.chunks)], self.stall_new)
            self.peers.append(peer)
            return peer
        finally:
            self.opening -= 1
            self._open_ended.set()
            self._open_ended = trio.Event()

    async def wait_no_connect(self) -> None:
        while self.opening:
            await self._open_ended.wait()

    async def end_session(self, deadline: float) -> int:
        dropped = await super().end_session(deadline)
        self.log[self.session].over_at = trio.current_time()
        return dropped

    async def bridge(self, stream: trio.abc.Stream) -> None:
        assert isinstance(stream, Peer)
        stream.bridged = True
        self._notify()
        await super().bridge(stream)

    def read(self, data: memoryview) -> None:
        self.reads[self.session] += data
        super().read(data)

    def event(self, event: ChrEvent) -> None:
        if event == ChrEvent.OPENED:
            mark = self.mark()
            if self.session in self.log:
                self.log[self.session].end = mark
            self.log[self.session + 1] = SessionLog(mark)
        elif event == ChrEvent.CLOSED:
            self.log[self.session].closed_at = self.dropped
            self.log[self.session].left_at = trio.current_time()
        super().event(event)
        self._notify()

    @property
    def current(self) -> Peer | None:
        """The peer bridged now, if any."""
        return self.peer if isinstance(self.peer, Peer) else None


class TakingDevice(CharDevice):
    """The channel's CharDevice, recording what it accepts from each session's client
    (`try_write` that took the data, `write_buffer_add`)."""

    def __init__(
        self,
        instance: DeviceInstance,
        session: Callable[[], int],
        *,
        byte_budget: int,
        client_queue_limit: int,
    ) -> None:
        super().__init__(instance, byte_budget=byte_budget, client_queue_limit=client_queue_limit)
        self.taken: defaultdict[int, bytearray] = defaultdict(bytearray)
        self._session = session

    def try_write(
        self, data: bytes | bytearray | memoryview, compressed_size: int | None = None
    ) -> bool:
        took = super().try_write(data, compressed_size)
        if took:
            self.taken[self._session()] += data
        return took

    def write_buffer_add(self, buf: WriteBuffer) -> None:
        self.taken[self._session()] += buf.data  # before: the device may slice it
        super().write_buffer_add(buf)


class Wire(trio.abc.Stream):
    """The server's end of one client connection. What the client sends waits here
    (unbounded); what the server sends is held up to `capacity` bytes until the client
    reads it, and the server's `send_all` waits beyond that (a full socket buffer)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.closed = False  # by the server
        self._in = bytearray()
        self._in_eof = False
        self._out = bytearray()
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---- the server's side (trio.abc.Stream) -------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                if self.closed:
                    raise trio.ClosedResourceError("closed")
                room = self.capacity - len(self._out)
                if room <= 0:
                    await self._changed.wait()
                    continue
                self._out += view[done : done + room]
                done += min(room, len(view) - done)
                self._notify()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise trio.ClosedResourceError("closed")
            if self._in:
                n = len(self._in) if max_bytes is None else max_bytes
                out = bytes(self._in[:n])
                del self._in[:n]
                return out
            if self._in_eof:
                return b""
            await self._changed.wait()

    async def aclose(self) -> None:
        self.closed = True
        self._notify()
        await trio.lowlevel.checkpoint()

    # ---- the client's side ---------------------------------------------------------

    def client_send(self, data: bytes) -> None:
        assert not self._in_eof
        self._in += data
        self._notify()

    def client_eof(self) -> None:
        self._in_eof = True
        self._notify()

    async def client_receive(self) -> bytes:
        """What the server wrote so far (b"" once it closed and all was read)."""
        while not self._out:
            if self.closed:
                return b""
            await self._changed.wait()
        out = bytes(self._out)
        self._out.clear()
        self._notify()
        return out


class Client:
    """One client session: a real `VmcChannelClient` over a `Wire` whose far end the
    test writes (DATA / COMPRESSED_DATA of the session's tagged bytes) and reads (device
    data, PORT_INIT, PORT_EVENT), or stops reading for a while (`mute`)."""

    def __init__(self, session: int, channel: VmcChannel, lz4: bool) -> None:
        self.session = session
        self.channel = channel
        self.lz4 = lz4
        self.wire = Wire()
        opts = ChannelOptions(f"client {session}", True, MAX_MESSAGE, False)
        self.server = VmcChannelClient(self.wire, opts, channel=channel, peer_lz4=lz4)
        self._source = Tagged(session, session)
        self._encoder = MessageEncoder(True)
        self.sent = bytearray()
        self.got = bytearray()  # device data shown to it
        self.port_inits: list[bool] = []
        self.port_events: list[int] = []
        self.closed_its_side = False
        self.cut = False  # disconnected by the server
        self.healthy_exit = False  # left with a working peer that stayed so: nothing lost
        self.done = trio.Event()  # serve_client returned
        self.read_all = trio.Event()
        self._reading = trio.Event()
        self._reading.set()

    async def serve(self) -> None:
        try:
            await self.channel.serve_client(self.server, b"")
        finally:
            await self.wire.aclose()  # what the server's connection handler does
            self.done.set()

    def mute(self) -> None:
        if self._reading.is_set():
            self._reading = trio.Event()

    def unmute(self) -> None:
        self._reading.set()

    async def read(self) -> None:
        decoder = MessageDecoder(True, MAX_MESSAGE)
        while True:
            await self._reading.wait()
            data = await self.wire.client_receive()
            if not data:
                break
            for msg in decoder.feed(data):
                if msg.type == MsgVmc.DATA:
                    self.got += msg.body
                elif msg.type == MsgVmc.COMPRESSED_DATA:
                    assert self.lz4
                    self.got += decompress_body(msg.body, MAX_MESSAGE)
                elif msg.type == MsgVmc.PORT_INIT:
                    self.port_inits.append(PortInit.decode(msg.body).opened)
                else:
                    assert msg.type == MsgVmc.PORT_EVENT, msg.type
                    self.port_events.append(PortEventMsg.decode(msg.body).event)
        self.read_all.set()

    def send(self, sizes: list[int]) -> None:
        messages: list[tuple[int, bytes]] = []
        for n in sizes:
            data = self._source.take(n)
            self.sent += data
            body = compress_body(data) if self.lz4 else None
            if body is not None:
                messages.append((MsgcVmc.COMPRESSED_DATA, body))
            else:
                messages.append((MsgcVmc.DATA, data))
        self.wire.client_send(self._encoder.encode_many(messages))

    def leave(self, close_side: bool) -> None:
        if close_side:
            self.closed_its_side = True
            self.wire.client_eof()  # the server reads what was sent, then sees the end
        else:
            self.cut = True
            self.server.disconnect()

    async def wait_done(self, patience: float) -> None:
        with trio.move_on_after(patience):
            await self.done.wait()
        if not self.done.is_set():  # still busy with what it sent: cut it
            self.cut = True
            self.server.disconnect()
            await self.done.wait()


@dataclass
class Setup:
    reconnect: float = 0.3
    drain: float = 1.0
    budget: int = BYTE_BUDGET
    client_queue_limit: int = CLIENT_QUEUE_LIMIT
    lz4: bool = False
    chunks: list[int] = field(default_factory=lambda: [1 << 20])


class Rig:
    """The channel, its backend and the clients of one schedule."""

    def __init__(self, setup: Setup, nursery: trio.Nursery) -> None:
        self.setup = setup
        self.nursery = nursery
        self.backend = ScriptedBackend(setup.reconnect, setup.drain, setup.chunks)
        channel = VmcChannel(ChannelType.PORT, 0, self.backend, PORT)
        # the same device, recording what it takes (built as VmcChannel builds its own;
        # it attaches itself to the frontend in place of that one)
        channel.device = TakingDevice(
            channel.chardev,
            lambda: self.backend.session,
            byte_budget=setup.budget,
            client_queue_limit=setup.client_queue_limit,
        )
        self.backend.channel = channel
        self.channel = channel
        self.clients: list[Client] = []
        self.current: Client | None = None  # joined and not left

    @property
    def device(self) -> TakingDevice:
        assert isinstance(self.channel.device, TakingDevice)
        return self.channel.device

    async def start(self) -> None:
        self.nursery.start_soon(self.channel.run)
        await trio.testing.wait_all_tasks_blocked()

    async def join(self) -> Client:
        assert self.current is None
        if self.clients:
            await self.clients[-1].wait_done(JOIN_PATIENCE)  # so it is not refused
        client = Client(len(self.clients) + 1, self.channel, self.setup.lz4)
        self.clients.append(client)
        self.current = client
        self.nursery.start_soon(client.serve)
        self.nursery.start_soon(client.read)
        return client

    def leave(self, close_side: bool = False) -> None:
        assert self.current is not None
        client, self.current = self.current, None
        peer = self.peer_of(client)  # (the one bridged now may be the previous client's)
        client.healthy_exit = peer is not None and not (
            peer.stalled or peer.reset or peer.finished or peer.limit is not None
        )
        client.leave(close_side)

    def peer_of(self, client: Client) -> Peer | None:
        """The peer bridged now if it is `client`'s."""
        peer = self.backend.current
        return peer if peer is not None and peer.session == client.session else None

    async def wait_attached(self, client: Client) -> None:
        """Wait until `client` is attached (its session began: the previous one's
        boundary is over)."""
        await self.backend.wait_for(lambda: self.backend.session >= client.session)

    async def wait_peer(self, client: Client) -> Peer:
        """Wait until `client`'s peer is bridged."""
        await self.backend.wait_for(lambda: self.peer_of(client) is not None)
        peer = self.peer_of(client)
        assert peer is not None
        return peer

    def harm(self, peer: Peer | None) -> None:
        """`peer` stalls or goes: if its client already left (its boundary may still be
        running), that client's bytes may be lost at the boundary."""
        if peer is not None:
            client = self.clients[peer.session - 1]
            if client is not self.current:
                client.healthy_exit = False

    async def boundary_over(self) -> None:
        """Wait until the last client to leave is detached and its boundary is over."""
        await self.clients[-1].done.wait()
        await self.channel._session_over.wait_value(True)

    async def finish(self) -> None:
        """The last client leaves; wait for its boundary and every connect attempt."""
        if self.current is not None:
            self.leave()
        for client in self.clients:
            client.unmute()
            await client.wait_done(JOIN_PATIENCE)
            await client.read_all.wait()
        await self.boundary_over()
        await self.backend.wait_no_connect()
        await trio.testing.wait_all_tasks_blocked()
        if self.backend.session:
            self.backend.log[self.backend.session].end = self.backend.mark()

    def check(self) -> None:
        check_all(self)


# ---- the checks ---------------------------------------------------------------------


def common_prefix(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    """The length of the common prefix of `a` and `b` (binary search on slices)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shown_in_order(got: bytes | bytearray, peers: list[Peer]) -> bool:
    """`got` is a prefix of what peers[0] said, then a prefix of what peers[1] said, ...

    Greedy is exact here: a peer's bytes carry its number (mod 16) in their high nibble,
    so the longest match with one peer stops where the next peer's bytes begin."""
    assert not peers or peers[-1].pid - peers[0].pid < 16, "peer tags would repeat"
    pos = 0
    for peer in peers:
        pos += common_prefix(memoryview(got)[pos:], peer.said)
    return pos == len(got)


def check_session(rig: Rig, client: Client) -> None:
    s = client.session
    backend, device = rig.backend, rig.device
    log = backend.log[s]
    assert log.end is not None and log.closed_at is not None, f"session {s} not over"
    start, end = log.start, log.end
    written = end.written - start.written
    dev_dropped = end.dev_dropped - start.dev_dropped
    be_dropped = end.be_dropped - start.be_dropped

    # the device took a prefix of what the client sent (all of it when the client
    # closed its side and the server read to the end) and wrote or dropped every byte
    taken = device.taken[s]
    assert taken == client.sent[: len(taken)], f"session {s}: the device took other bytes"
    if client.closed_its_side and not client.cut:
        assert len(taken) == len(client.sent), f"session {s}: bytes lost before the device"
    assert len(taken) == written + dev_dropped, f"session {s}: taken != written + dropped"
    # the frontend handed the backend exactly what the device wrote, in order
    reads = backend.reads[s]
    assert len(reads) == written and reads == taken[:written], f"session {s}: frontend"

    # the boundary rule: each of its peers got one range of its own bytes, in order
    peers = [p for p in backend.peers if p.session == s]
    pos = 0
    for p in peers:
        if not p.bridged:
            assert not p.received, f"peer {p.pid} opened for a gone client got bytes"
            continue
        at = reads.find(p.received, pos) if p.received else pos
        assert at >= 0, f"peer {p.pid} (session {s}) got bytes not of its session, in order"
        pos = at + len(p.received)
    got = sum(len(p.received) for p in peers)
    interrupted = sum(p.interrupted for p in peers)
    assert written == got + be_dropped - interrupted, (
        f"session {s}: written {written} != peers got {got} + backend dropped {be_dropped}"
        f" - taken by interrupted writes {interrupted}"
    )
    # the boundary keeps its deadline
    assert log.left_at is not None and log.over_at is not None
    assert log.over_at - log.left_at <= rig.setup.drain + 1e-9, f"session {s}: late boundary"
    # the channel counts what was dropped after the client left
    after_leaving = end.be_dropped - log.closed_at
    assert end.chan_dropped - start.chan_dropped == dev_dropped + after_leaving, (
        f"session {s}: channel dropped {end.chan_dropped - start.chan_dropped} != device"
        f" {dev_dropped} + backend after the client left {after_leaving}"
    )

    # a client that left with a working peer, which stayed so, lost nothing at the
    # boundary (its bytes had the drain time to reach that peer)
    if client.healthy_exit:
        assert dev_dropped == 0 and after_leaving == 0, (
            f"session {s}: dropped at the boundary though its peer took bytes:"
            f" {dev_dropped} in the device, {after_leaving} in the backend"
        )

    # device -> client: only its own peers' data, each a prefix, peer after peer
    assert shown_in_order(client.got, [p for p in peers if p.bridged]), (
        f"session {s}: the client was shown data not from its own peers, or out of order"
    )
    # no peer outlives a boundary: the port is closed when a client arrives
    assert client.port_inits in ([], [False]), client.port_inits
    if client.port_events:
        assert client.port_inits == [False]
    expected = [PortEvent.OPENED, PortEvent.CLOSED] * len(client.port_events)
    assert client.port_events == expected[: len(client.port_events)], client.port_events
    assert client.port_events.count(PortEvent.OPENED) <= sum(p.bridged for p in peers)


def check_all(rig: Rig) -> None:
    backend, device, channel = rig.backend, rig.device, rig.channel
    assert backend.session == len(rig.clients)  # every client was attached once
    for client in rig.clients:
        check_session(rig, client)
    assert not set(backend.reads) - set(range(1, len(rig.clients) + 1))
    assert all(p.session >= 1 for p in backend.peers)
    # all idle: tokens back, nothing buffered anywhere, no client, no peer open
    assert device.idle and device.tokens_free == VMC_TOKENS and device.buffered_bytes == 0
    assert device.queued_buffers == 0 and device.outstanding_buffers == 0
    assert device.client is None and channel.client is None
    chardev = channel.chardev
    assert chardev.pending_size == 0 and not chardev.connected and not chardev.fe_open
    assert backend.out_bytes == 0 and backend.peer is None and not backend.client_attached
    assert all(p.closed for p in backend.peers), "a peer was left open"
    for client in rig.clients:
        assert client.server.queued_bytes == 0


# ---- random schedules -----------------------------------------------------------------

TALK = st.tuples(st.just("talk"), st.integers(1, 20_000))
TIME = st.tuples(st.just("time"), st.integers(1, 40))  # x 50 ms
RESUME = st.tuples(st.just("resume"), st.just(0))
PEER_OPS = [
    st.tuples(st.just("stall"), st.just(0)),
    RESUME,
    RESUME,
    st.tuples(st.sampled_from(["rst", "fin"]), st.just(0)),
    TALK,
    TALK,
    TIME,
    TIME,
    TIME,
    st.one_of(
        st.tuples(st.just("refuse"), st.just(1)),  # the next connect fails
        st.tuples(st.just("slow"), st.integers(1, 10)),  # the next takes x 50 ms
    ),
]
SEND = st.tuples(st.just("send"), st.integers(1, 4000))
CLIENT_OPS = [
    SEND,
    SEND,
    st.tuples(st.just("big"), st.integers(20_000, 150_000)),
    st.tuples(st.just("burst"), st.integers(2, 40)),
    st.tuples(st.just("mute"), st.just(0)),  # the client stops reading
    st.tuples(st.just("unmute"), st.just(0)),
    st.tuples(st.just("lose"), st.integers(1, 300_000)),  # its peer resets with bytes
]


def steps(
    ops: list[st.SearchStrategy[tuple[str, int]]], min_size: int, max_size: int
) -> st.SearchStrategy[list[tuple[str, int, str]]]:
    """Ops, each followed by nothing, one scheduling point, or a settle (every task
    blocked, no time passing)."""
    then = st.sampled_from(["", "checkpoint", "settle", "settle"])
    step = st.tuples(st.one_of(ops), then).map(lambda t: (t[0][0], t[0][1], t[1]))
    return st.lists(step, min_size=min_size, max_size=max_size)


# a schedule: client sessions, each with what happens while the client is there, how
# it leaves (1: it closes its side) and what happens before the next client comes
# what happens just before a client leaves: nothing special, or its peer stops reading
# while it sends ("stuck"), or it sends a lot to a reading peer ("flood": more than the
# backend holds), or it stops reading while its peer talks ("muted")
LAST = st.one_of(
    st.tuples(st.just(""), st.just(0)),
    st.tuples(st.just("stuck"), st.integers(1, 300_000)),
    st.tuples(st.just("flood"), st.integers(2, 4)),
    st.tuples(st.just("muted"), st.integers(1_000, 40_000)),
)
SESSIONS = st.lists(
    st.tuples(
        # after the join: go on at once (racing the previous boundary), or wait until
        # the client is attached, or until its peer is up too (a while at most)
        st.sampled_from(["", "attached", "peer", "peer"]),
        steps(CLIENT_OPS + PEER_OPS, 3, 16),
        LAST,  # the state it leaves in
        st.integers(0, 1),  # 1: it leaves by closing its side (the server reads it all)
        st.booleans(),  # settle after it left
        steps(PEER_OPS, 0, 4),  # while its boundary may still run
    ),
    min_size=1,
    max_size=5,
)
SETUPS = st.builds(
    Setup,
    reconnect=st.sampled_from([0.0, 0.3, 0.3, 2.0]),
    drain=st.sampled_from([0.2, 1.0, 3.0]),
    budget=st.sampled_from([1, 3000, 64 * 1024, BYTE_BUDGET]),
    client_queue_limit=st.sampled_from([3000, CLIENT_QUEUE_LIMIT]),
    lz4=st.booleans(),
    chunks=st.lists(st.sampled_from([700, 4096, 65536, 1 << 20]), min_size=1, max_size=4),
)
Steps = list[tuple[str, int, str]]
Schedule = list[tuple[str, Steps, tuple[str, int], int, bool, Steps]]


async def run_op(rig: Rig, op: str, arg: int, rng: random.Random) -> None:
    backend, client, peer = rig.backend, rig.current, rig.backend.current
    if op in ("stall", "rst", "fin"):
        rig.harm(peer)  # the peer bridged now may be the one of a client that left
    if op in ("send", "big") and client is not None:
        client.send([arg])
    elif op == "burst" and client is not None:
        client.send([rng.randint(1, 300) for _ in range(arg)])
    elif op == "lose" and client is not None and peer is not None:
        if peer.session == client.session:  # the peer stalls, bytes pile up, it resets
            peer.stall()
            client.send([arg])
            await trio.testing.wait_all_tasks_blocked()
            peer.rst()
    elif op == "mute" and client is not None:
        client.mute()
    elif op == "unmute" and client is not None:
        client.unmute()
    elif op == "stall":
        backend.stall_new = True
        if peer is not None:
            peer.stall()
    elif op == "resume":
        backend.stall_new = False
        if peer is not None:
            peer.resume()
    elif op == "rst" and peer is not None:
        peer.rst()
    elif op == "fin" and peer is not None:
        peer.fin()
    elif op == "talk" and peer is not None:
        peer.talk(arg)
    elif op == "time":
        await trio.sleep(arg * 0.05)  # virtual time passes (timers, backoff, deadlines)
    elif op == "refuse":
        backend.refuse = arg
    elif op == "slow":
        backend.delay = arg * 0.05


async def before_leaving(rig: Rig, last: str, arg: int, rng: random.Random) -> None:
    client = rig.current
    assert client is not None
    peer = rig.peer_of(client)
    if last == "stuck":
        await run_op(rig, "stall", 0, rng)
        client.send([arg])
        await trio.testing.wait_all_tasks_blocked()
    elif last == "flood":
        if peer is not None:
            peer.resume()
        client.send([150_000] * arg)
        await trio.lowlevel.checkpoint()
    elif last == "muted":
        client.mute()
        for _ in range(2):  # the second waits in the frontend once the first fills the client
            if peer is not None:
                peer.talk(arg)
            await trio.testing.wait_all_tasks_blocked()


async def run_steps(rig: Rig, steps: Steps, rng: random.Random) -> None:
    for op, arg, then in steps:
        await run_op(rig, op, arg, rng)
        if then == "checkpoint":
            await trio.lowlevel.checkpoint()
        elif then == "settle":
            await trio.testing.wait_all_tasks_blocked()


async def run_schedule(rig: Rig, schedule: Schedule, seed: int) -> None:
    rng = random.Random(seed)
    for wait, during, (last, arg), close_side, settle_after, after in schedule:
        client = await rig.join()
        if wait:
            await rig.wait_attached(client)
        if wait == "peer":
            with trio.move_on_after(1):
                await rig.wait_peer(client)
        await run_steps(rig, during, rng)
        await before_leaving(rig, last, arg, rng)
        rig.leave(close_side=bool(close_side))
        if settle_after:
            await trio.testing.wait_all_tasks_blocked()
        await run_steps(rig, after, rng)
    await rig.finish()


@settings(max_examples=100, deadline=None)
@given(SETUPS, SESSIONS, st.integers(0, 2**32 - 1))
def test_random_schedules_keep_the_boundary(setup: Setup, schedule: Schedule, seed: int) -> None:
    async def scenario() -> None:
        with trio.fail_after(3600):  # virtual: a deadlock fails instead of hanging
            async with trio.open_nursery() as nursery:
                rig = Rig(setup, nursery)
                await rig.start()
                await run_schedule(rig, schedule, seed)
                rig.check()
                nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


# ---- particular interleavings --------------------------------------------------------


@asynccontextmanager
async def running(setup: Setup) -> AsyncIterator[Rig]:
    with trio.fail_after(600):  # virtual: a deadlock fails instead of hanging
        async with trio.open_nursery() as nursery:
            rig = Rig(setup, nursery)
            await rig.start()
            yield rig
            await rig.finish()
            rig.check()
            nursery.cancel_scope.cancel()


async def test_bytes_held_for_a_stalled_peer_are_counted_at_the_boundary(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the bytes the backend held for a stalled peer when the deadline closed
    it were counted in the backend's `dropped` but not in the channel's `bytes_dropped`
    nor its log line (the bridge, cancelled by `end_session`, dropped them first and
    `end_session` returned 0)."""
    async with running(Setup(drain=1.0)) as rig:
        client = await rig.join()
        peer = await rig.wait_peer(client)
        peer.stall()
        client.send([5000])
        await trio.testing.wait_all_tasks_blocked()
        assert rig.backend.out_bytes == 5000 and rig.device.buffered_bytes == 0
        rig.leave()
        left = trio.current_time()
        await rig.boundary_over()
        assert trio.current_time() - left == pytest.approx(1.0)  # the drain deadline
        assert not peer.received and peer.closed
        assert rig.backend.dropped == rig.channel.bytes_dropped == 5000
        assert "5000 bytes from the client that left were not delivered" in caplog.text


async def test_a_peer_that_resets_during_the_drain_ends_the_boundary_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression: a boundary waiting for a stalled peer to take the departed client's
    bytes waited on, to the drain deadline, after that peer reset (nothing could reach
    it any more): the next client was kept waiting for nothing."""
    async with running(Setup(drain=3.0)) as rig:
        a = await rig.join()
        peer = await rig.wait_peer(a)
        peer.stall()
        a.send([5000])
        await trio.testing.wait_all_tasks_blocked()
        rig.leave()
        b = await rig.join()
        b.send([100])
        await trio.testing.wait_all_tasks_blocked()
        assert rig.backend.session == 1  # b waits for a's boundary
        reset_at = trio.current_time()
        peer.rst()
        b_peer = await rig.wait_peer(b)
        assert trio.current_time() == reset_at  # not at the deadline, 3 s later
        await trio.testing.wait_all_tasks_blocked()
        assert b_peer.received == b.sent and not peer.received
        assert rig.channel.bytes_dropped == 5000  # dropped by the bridge after a left


async def test_a_reset_while_the_device_still_holds_bytes_is_counted_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The departed client sent more than the backend holds (the device keeps the rest)
    to a stalled peer, which then resets: both parts count as dropped at the boundary,
    the backend's (dropped by the bridge as the peer went) and the device's."""
    async with running(Setup(drain=1.0)) as rig:
        a = await rig.join()
        peer = await rig.wait_peer(a)
        peer.stall()
        a.send([150_000, 150_000])
        await trio.testing.wait_all_tasks_blocked()
        held = rig.backend.out_bytes
        assert 0 < held < 300_000 and rig.device.buffered_bytes == 300_000 - held
        rig.leave()
        await trio.testing.wait_all_tasks_blocked()
        peer.rst()
        await rig.boundary_over()
        assert rig.backend.dropped == held and rig.device.stats.dropped == 300_000 - held
        assert rig.channel.bytes_dropped == 300_000


async def test_a_connect_that_completes_after_its_client_left_is_closed_unused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A's connect takes 1 s; A leaves at once and its boundary (0.2 s: nothing could
    be delivered) ends before the connect does. The late peer is closed unused; B gets a
    fresh peer with only B's bytes."""
    async with running(Setup(drain=0.2)) as rig:
        rig.backend.delay = 1.0
        a = await rig.join()
        a.send([100])
        await trio.testing.wait_all_tasks_blocked()
        assert rig.backend.opening == 1
        rig.leave()
        b = await rig.join()
        b.send([10])
        await rig.wait_attached(b)
        assert trio.current_time() < 1.0  # B is attached while A's connect still runs
        b_peer = await rig.wait_peer(b)
        late = rig.backend.peers[0]
        assert late.session == 1 and not late.bridged and late.closed and not late.received
        await trio.testing.wait_all_tasks_blocked()
        assert b_peer.session == 2 and b_peer.received == b.sent
        assert rig.channel.bytes_dropped == 100  # A's bytes never had a peer


async def test_a_departed_clients_peer_talks_to_nobody_and_still_gets_its_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A's stalled peer talks after A left: nobody is shown it (not B, who waits for the
    boundary); it reads again within the deadline and gets all A sent; B then gets its
    own peer and sees only what that peer says."""
    async with running(Setup(drain=3.0)) as rig:
        a = await rig.join()
        peer = await rig.wait_peer(a)
        peer.stall()
        a.send([300_000])
        await trio.testing.wait_all_tasks_blocked()
        rig.leave()
        await trio.testing.wait_all_tasks_blocked()
        peer.talk(1000)
        b = await rig.join()
        b.send([10])
        await trio.sleep(1)  # virtual: A's peer stalls a second more
        peer.resume()
        b_peer = await rig.wait_peer(b)
        assert peer.received == a.sent and peer.closed
        b_peer.talk(10)
        await trio.testing.wait_all_tasks_blocked()
        assert not a.got and b.got == b_peer.said
        assert rig.channel.bytes_dropped == 0


async def test_a_write_cut_short_at_the_deadline_counts_whole_as_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the backend cannot know: the peer took 1000 bytes of a 5000-byte write and
    stalled; the deadline cancels the write and the whole of it counts as dropped,
    though the peer has 1000 of those bytes (a cancelled `send_all` says nothing of how
    far it got). The accounting check allows for exactly that part."""
    async with running(Setup(drain=1.0, chunks=[700])) as rig:
        a = await rig.join()
        peer = await rig.wait_peer(a)
        peer.limit = 1000
        a.send([5000])
        await trio.testing.wait_all_tasks_blocked()
        rig.leave()
        await rig.boundary_over()
        assert peer.received == a.sent[:1000] and peer.interrupted == 1000
        assert rig.backend.dropped == rig.channel.bytes_dropped == 5000
