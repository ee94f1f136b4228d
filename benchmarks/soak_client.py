"""The soak's load: SPICE sessions streaming a verifiable pattern through their port
channel to the echo peer and back, and the faults the driver orders.

Session k of the soak ("slot" k) links a main channel and port channel k % PER_SERVER
of the server at SPICE port k // PER_SERVER with trivmc's own client. Its stream is
`pattern(uid, ...)`: little-endian u64 words `uid << 32 | word index`, so every byte
that comes back is checked for place and owner (a byte of another session says whose).

A session ends when the driver orders it to (`SoakSession.order`):

- `finish`: stop sending at a message boundary, wait for every byte to come back, leave;
- `leave`: stop at a message boundary and close the channels (a polite client);
- `reset`: stop, send part of one more DATA message, then close both sockets with
  SO_LINGER 0 (RST);
- `drop`: the peer closes the backend connection (FIN after shutting its side, or RST
  as a crashed peer); the session waits to see the port close and open again (the
  server reconnects), then leaves.

A session that had `leave`, `reset` or `drop` is *faulted*: what it gets back after
the fault is counted but not checked. Every other session must get every byte back,
once and in order. Stalls are not faults: the peer stops reading the session's backend
for a while and the session pushes a window's worth of data into it meanwhile.
"""

from __future__ import annotations

import math
import random
import socket
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Protocol

import trio

from trivmc.client import ChannelStream, Session, connect
from trivmc.protocol import ChannelType, MsgcVmc, PortEvent

from .soak_server import port_name

WORD = 8
FAULTS = ("reset", "leave", "stall", "drop")
DROP_MODES = ("fin", "rst")  # how the peer closes a dropped backend connection
STOP_TIMEOUT = 5.0  # a faulted session's sender gets this long to finish its write
PARTIAL_TIMEOUT = 2.0  # to send the partial message of a reset
DROP_WAIT = 5.0  # for the port to close and open again after a drop
BUSY_RETRIES = 20  # links refused because the slot's previous client is still there
BUSY_BACKOFF = 0.05
MAX_LISTED = 20  # problems kept with their text (all are counted)
SMALL_BATCH = 256 * 1024  # bytes of small messages a stalled session sends in one write
START_SPREAD = 0.5  # seconds over which the sessions send their first write


def pattern(uid: int, start: int, size: int) -> bytes:
    """Bytes [start, start + size) of session `uid`'s stream."""
    first, end = start // WORD, -(-(start + size) // WORD)
    if end >= 1 << 32:
        raise ValueError("a session streams at most 32 GiB")
    base = uid << 32
    words = array("Q", range(base + first, base + end))
    if sys.byteorder == "big":
        words.byteswap()
    skip = start - first * WORD
    return words.tobytes()[skip : skip + size]


def write_size(rng: random.Random) -> int:
    """The size of one write: mostly small (keystrokes, QMP), some up to 64 KiB (one
    DATA message each), a tenth up to 192 KiB (the client sends 64 KiB messages)."""
    r = rng.random()
    if r < 0.4:
        return rng.randint(1, 512)
    if r < 0.7:
        return rng.randint(513, 8192)
    if r < 0.9:
        return rng.randint(8193, 65536)
    return rng.randint(65537, 3 * 65536)


def small_write_size(rng: random.Random) -> int:
    """Small messages for half the stall bursts: many of them, so tokens run out."""
    return rng.randint(16, 2048)


@dataclass
class Settings:
    sessions: int
    per_server: int
    spice_ports: list[int]
    rate: float  # bytes per second, all sessions together, each way
    window: int  # bytes a session may have sent and not yet got back
    lz4_fraction: float
    link_timeout: float
    seed: int
    drop_modes: list[str] = field(default_factory=lambda: list(DROP_MODES))


@dataclass
class Stats:
    sessions_linked: int = 0
    replacements: int = 0  # linked in place of a faulted session
    busy_retries: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    faults_skipped: int = 0
    faults_on_stalled: int = 0  # resets, leaves and drops of a session while stalled
    bytes_sent: int = 0
    bytes_verified: int = 0
    bytes_unchecked: int = 0  # came back to faulted sessions after their fault
    sessions_verified: int = 0  # non-faulted sessions that got every byte back at the end
    drops_seen: int = 0  # drops the session saw as PORT_EVENT CLOSED then OPENED
    drops_by_mode: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_MODES, 0))
    partials_sent: int = 0
    mismatches: int = 0
    problems: int = 0
    listed: list[str] = field(default_factory=list)

    def problem(self, text: str, mismatch: bool = False) -> None:
        self.problems += 1
        self.mismatches += mismatch
        if len(self.listed) < MAX_LISTED:
            self.listed.append(text)


class PeerControl(Protocol):
    async def command(self, line: str) -> None: ...


class SoakSession:
    """One SPICE session on one slot, from link to leave."""

    def __init__(self, uid: int, slot: int, lz4: bool, rng: random.Random) -> None:
        self.uid = uid
        self.slot = slot
        self.lz4 = lz4
        self.rng = rng
        self.sent = 0
        self.received = 0
        self.verifying = True
        self.fault: str | None = None
        self.command: str | None = None
        self.commanded = trio.Event()
        self.closing = False
        self.linked = False
        self.port_open = False
        self.opened = 0
        self.closed = 0
        self.events_changed = trio.Event()
        self.progress = trio.Event()
        self.poke = trio.Event()
        self.burst = 0
        self.burst_small = False
        self.stalled_until = 0.0
        self.stopping = False
        self.idle_scope: trio.CancelScope | None = None
        self.sender_scope = trio.CancelScope()
        self.sender_done = trio.Event()

    @property
    def name(self) -> str:
        return f"session {self.uid} (slot {self.slot})"

    def order(self, command: str) -> bool:
        """Ask the session to end (`finish`, `leave`, `reset`, `drop`, `lost`); False
        when it already has an order."""
        if self.command is not None:
            return False
        self.command = command
        self.commanded.set()
        return True

    def push(self, nbytes: int, small: bool) -> None:
        """Send `nbytes` more at once (while the backend is stalled)."""
        self.burst += nbytes
        self.burst_small = small
        self.poke.set()

    def _progressed(self) -> None:
        self.progress.set()
        self.progress = trio.Event()

    def _events(self) -> None:
        self.events_changed.set()
        self.events_changed = trio.Event()


class Load:
    """Every slot's sessions, one after the other, for the soak's duration."""

    def __init__(self, cfg: Settings, peer: PeerControl) -> None:
        self.cfg = cfg
        self.peer = peer
        self.stats = Stats()
        self.rng = random.Random(cfg.seed)
        self.live: dict[int, SoakSession] = {}
        self.ended: dict[int, str] = {}  # uid -> how it ended (its fault), for mismatches
        self.ending = False
        self.drain_deadline = math.inf
        self.all_linked = trio.Event()
        self.started = trio.Event()  # traffic starts once every first session is linked
        self.initial_linked = 0
        self._next_uid = 1
        self._link_limit = trio.Semaphore(32)
        self._per_session_rate = cfg.rate / cfg.sessions

    # ---- the driver's side ----------------------------------------------------

    def finish(self, drain_timeout: float) -> None:
        """Stop: every session stops sending, waits for its bytes, leaves."""
        self.ending = True
        self.started.set()
        self.drain_deadline = trio.current_time() + drain_timeout
        for s in list(self.live.values()):
            s.order("finish")

    async def inject(
        self,
        until: float,
        rate_per_minute: float,
        kinds: list[str],
        stall: tuple[float, float],
        on_stalled: float,
    ) -> None:
        """Faults at random times (a Poisson process of `rate_per_minute` for all
        sessions together) on random live sessions whose backend is up, until `until`.
        Kinds come in shuffled rounds, so each turns up as often as the others. A reset,
        leave or drop goes to a session whose backend is stalled with probability
        `on_stalled` (when one is), so faults also meet while data is held up."""
        rate = rate_per_minute / 60
        bag: list[str] = []
        if rate <= 0 or not kinds:
            return
        at = trio.current_time()
        while True:
            at += self.rng.expovariate(rate)  # absolute times: a busy loop does not slow it
            if at >= until:
                return
            await trio.sleep_until(at)  # pacing, not synchronisation
            if not bag:
                bag = list(kinds)
                self.rng.shuffle(bag)
            kind = bag.pop()
            now = trio.current_time()
            candidates = [s for s in self.live.values() if s.command is None and s.port_open]
            stalled = [s for s in candidates if s.stalled_until > now]
            if kind != "stall" and stalled and self.rng.random() < on_stalled:
                candidates = stalled  # a client gives up on a stalled device, say
                self.stats.faults_on_stalled += 1
            if not candidates:
                self.stats.faults_skipped += 1
                continue
            s = self.rng.choice(candidates)
            self.stats.faults[kind] += 1
            if kind == "stall":
                seconds = self.rng.uniform(*stall)
                s.stalled_until = max(s.stalled_until, now + seconds)
                await self.peer.command(f"stall {s.slot} {seconds:.3f}")
                s.push(self.cfg.window, small=self.rng.random() < 0.5)
            else:
                s.order(kind)

    # ---- one slot ----------------------------------------------------------------

    async def run_slot(self, slot: int) -> None:
        first = True
        while not self.ending:
            uid = self._next_uid
            self._next_uid += 1
            lz4 = self.rng.random() < self.cfg.lz4_fraction
            s = SoakSession(uid, slot, lz4, random.Random(self.rng.getrandbits(64)))
            await self._run_session(s, first)
            self.ended[s.uid] = s.fault or s.command or "?"
            first = False
            if s.command == "lost" and s.fault is None and not s.linked:
                return  # could not link: the problem is recorded, do not spin

    async def _run_session(self, s: SoakSession, first: bool) -> None:
        for attempt in range(BUSY_RETRIES):
            busy = await self._attempt(s, first)
            if not busy:
                return
            self.stats.busy_retries += 1
            if self.ending:
                return
            await trio.sleep(BUSY_BACKOFF * (attempt + 1))  # the old client is on its way out
        self.stats.problem(f"{s.name}: the port channel stayed busy over {BUSY_RETRIES} links")
        s.order("lost")

    async def _attempt(self, s: SoakSession, first: bool) -> bool:
        """Link and serve the session; True when the port channel refused it as busy
        (its previous client is not gone yet)."""
        cfg = self.cfg
        uri = f"spice://127.0.0.1:{cfg.spice_ports[s.slot // cfg.per_server]}"
        await self._link_limit.acquire()
        holding = True
        try:
            with trio.CancelScope() as guard:
                guard.deadline = trio.current_time() + cfg.link_timeout
                async with connect(uri, lz4=s.lz4) as spice:
                    channel = await spice.open_channel(ChannelType.PORT, s.slot % cfg.per_server)
                    try:
                        name = await channel.wait_port_init()
                    except trio.BrokenResourceError:
                        return True
                    if name != port_name(s.slot):
                        self.stats.problem(f"{s.name}: PORT_INIT names {name!r}")
                        s.order("lost")
                        return False
                    guard.deadline = math.inf
                    self._link_limit.release()
                    holding = False
                    await self._serve(s, spice, channel, first)
            if guard.cancelled_caught:
                self.stats.problem(f"{s.name}: not linked within {cfg.link_timeout:.0f} s")
                s.order("lost")
        except Exception as e:
            if not s.linked:
                self.stats.problem(f"{s.name}: link failed: {e!r}")
                s.order("lost")
            elif s.fault is None and not s.closing:
                self.stats.problem(f"{s.name}: failed: {e!r}")
        finally:
            if holding:
                self._link_limit.release()
        return False

    async def _serve(
        self, s: SoakSession, spice: Session, channel: ChannelStream, first: bool
    ) -> None:
        s.linked = True
        s.port_open = bool(channel.opened)  # PORT_INIT's state; PORT_EVENTs follow
        self.stats.sessions_linked += 1
        self.stats.replacements += not first
        self.live[s.slot] = s
        if first:
            self.initial_linked += 1
            if self.initial_linked == self.cfg.sessions:
                self.all_linked.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receiver, s, channel)
                nursery.start_soon(self._port_events, s, channel)
                nursery.start_soon(self._sender, s, channel)
                if self.ending:
                    s.order("finish")
                await s.commanded.wait()
                await self._act(s, spice, channel)
                nursery.cancel_scope.cancel()
        finally:
            if self.live.get(s.slot) is s:
                del self.live[s.slot]

    # ---- what a session does ------------------------------------------------------

    async def _sender(self, s: SoakSession, channel: ChannelStream) -> None:
        stats = self.stats
        delay = s.rng.uniform(0, START_SPREAD)  # all active early in the warm-up round
        try:
            with s.sender_scope:
                while True:
                    with trio.CancelScope() as idle:
                        s.idle_scope = idle
                        if not s.stopping:
                            await self.started.wait()
                            if not s.burst:
                                with trio.move_on_after(delay):  # pacing
                                    await s.poke.wait()
                                if s.poke.is_set():
                                    s.poke = trio.Event()
                            while s.sent - s.received >= self.cfg.window:
                                await s.progress.wait()
                    s.idle_scope = None
                    if s.stopping:
                        return
                    if s.burst > 0 and s.burst_small:
                        await self._send_small_batch(s, channel)
                        delay = 0.0
                        continue
                    if s.burst > 0:
                        size = min(write_size(s.rng), s.burst)
                        s.burst -= size
                        delay = 0.0
                    else:
                        size = write_size(s.rng)
                        delay = size / self._per_session_rate * s.rng.uniform(0.5, 1.5)
                    data = pattern(s.uid, s.sent, size)
                    s.sent += size
                    stats.bytes_sent += size
                    await channel.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._lost(s, f"send failed: {e}")
        finally:
            s.sender_done.set()

    async def _send_small_batch(self, s: SoakSession, channel: ChannelStream) -> None:
        """Up to SMALL_BATCH bytes of the burst as small DATA messages in one write:
        cheap for this client, one token each for the server."""
        sizes: list[int] = []
        total = 0
        while total < min(SMALL_BATCH, s.burst):
            sizes.append(min(small_write_size(s.rng), s.burst - total))
            total += sizes[-1]
        data = pattern(s.uid, s.sent, total)
        encode = channel.conn.encoder.encode
        frames, at = [], 0
        for size in sizes:
            frames.append(encode(MsgcVmc.DATA, data[at : at + size]))
            at += size
        s.burst -= total
        s.sent += total
        self.stats.bytes_sent += total
        await channel.conn.send_raw(b"".join(frames))

    async def _stop_sender(self, s: SoakSession, deadline: float) -> None:
        """Stop sending at a message boundary (waiting until `deadline` for a write in
        progress); past it the write is cut short."""
        s.stopping = True
        if s.idle_scope is not None:
            s.idle_scope.cancel()
        with trio.move_on_at(deadline):
            await s.sender_done.wait()
        s.sender_scope.cancel()

    async def _receiver(self, s: SoakSession, channel: ChannelStream) -> None:
        stats = self.stats
        try:
            while True:
                data = await channel.receive_some()
                if not data:
                    self._lost(s, "the server closed the port channel")
                    return
                n = len(data)
                if s.verifying:
                    if s.received + n > s.sent or data != pattern(s.uid, s.received, n):
                        self._mismatch(s, self._describe(s, data))
                    else:
                        stats.bytes_verified += n
                else:
                    stats.bytes_unchecked += n
                s.received += n
                s._progressed()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._lost(s, f"receive failed: {e}")

    async def _port_events(self, s: SoakSession, channel: ChannelStream) -> None:
        try:
            while True:
                event = await channel.next_event()
                if event == PortEvent.OPENED:
                    s.opened += 1
                    s.port_open = True
                elif event == PortEvent.CLOSED:
                    s.closed += 1
                    s.port_open = False
                    if s.fault is None and not s.closing:
                        self.stats.problem(f"{s.name}: its backend closed (PORT_EVENT CLOSED)")
                s._events()
        except trio.BrokenResourceError:
            return

    def _lost(self, s: SoakSession, why: str) -> None:
        if s.fault is None and not s.closing:
            s.verifying = False
            self.stats.problem(f"{s.name}: {why}")
            s.order("lost")

    def _mismatch(self, s: SoakSession, why: str) -> None:
        s.verifying = False
        self.stats.problem(f"{s.name}: {why}", mismatch=True)
        s.order("lost")

    def _describe(self, s: SoakSession, data: bytes) -> str:
        """Where the bytes that came back first differ from the pattern, and whose
        stream they are (at whatever alignment) when they are some session's."""
        expected = pattern(s.uid, s.received, min(len(data), s.sent - s.received))
        i = next((j for j in range(len(expected)) if data[j] != expected[j]), len(expected))
        what = "differs" if i < len(expected) else "is more than it sent"
        text = f"byte {s.received + i} {what} (sent {s.sent}, {s.received} came back right)"
        start = max(0, i - WORD + 1)
        for j in range(start, min(start + WORD, len(data) - WORD + 1)):
            (word,) = struct.unpack_from("<Q", data, j)
            uid, index = word >> 32, word & 0xFFFFFFFF
            if 0 < uid < self._next_uid:
                whose = "its own" if uid == s.uid else f"session {uid}'s"
                text += f"; from there on they are {whose} bytes from {index * WORD - (j - i)}"
                if uid != s.uid:
                    text += f" (that session: {self.ended.get(uid, 'live')})"
                return text
        return text + "; they are no session's"

    async def _act(self, s: SoakSession, spice: Session, channel: ChannelStream) -> None:
        kind = s.command
        now = trio.current_time()
        if kind == "finish":
            await self._stop_sender(s, self.drain_deadline)
            with trio.move_on_at(self.drain_deadline):
                while s.verifying and s.received < s.sent:
                    await s.progress.wait()
            if s.verifying:
                if s.received == s.sent:
                    self.stats.sessions_verified += 1
                else:
                    self.stats.problem(
                        f"{s.name}: {s.received} of {s.sent} bytes came back by the drain deadline"
                    )
            s.closing = True
        elif kind in ("leave", "reset", "drop"):
            s.fault = kind
            s.verifying = False
            if kind == "drop":
                await self._drop(s)
            await self._stop_sender(s, now + STOP_TIMEOUT)
            s.closing = True
            if kind == "reset":
                await self._reset(s, spice, channel)
        else:
            s.closing = True
        await channel.aclose()

    async def _drop(self, s: SoakSession) -> None:
        closed, opened = s.closed, s.opened
        how = s.rng.choice(self.cfg.drop_modes)
        self.stats.drops_by_mode[how] += 1
        await self.peer.command(f"drop {s.slot} {how}")
        with trio.move_on_after(DROP_WAIT):
            while not (s.closed > closed and s.opened > opened):
                await s.events_changed.wait()
            self.stats.drops_seen += 1

    async def _reset(self, s: SoakSession, spice: Session, channel: ChannelStream) -> None:
        """Part of one more DATA message, then RST on the port and main sockets."""
        size = write_size(s.rng)
        message = channel.conn.encoder.encode(MsgcVmc.DATA, pattern(s.uid, s.sent, size))
        cut = s.rng.randint(1, len(message) - 1)
        with trio.move_on_after(PARTIAL_TIMEOUT):
            await channel.conn.send_raw(message[:cut])
            self.stats.partials_sent += 1
        linger = struct.pack("ii", 1, 0)
        streams = [channel.conn.stream] + ([spice.main.stream] if spice.main else [])
        for stream in streams:
            if isinstance(stream, trio.SocketStream):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
