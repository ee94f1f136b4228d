"""`StreamBackend`: one peer stream at a time bridged to the chardev.

While there is no peer, `can_read()` is 0: client data waits in the char device's
queue under its budget, so nothing accepted is dropped while the backend is away. The
port sees OPENED when a peer is up and CLOSED when it goes (PORT_EVENT for port
clients). A peer's failure (a reset included) is logged with its cause and never
raises out of the backend; bytes left for a peer that is gone are dropped and counted
(`dropped`), never carried to another peer.

The session boundary (`end_session`, called by the channel once the device handed over
everything the departed client sent) gives a per-session peer until the drain
deadline to take those bytes, then closes it. A *standing* backend (a usbredir
channel's, connecting.py) opens the guest side once its peer has spoken, and keeps what
the peer says before its first client for that client (`early_words.py`).

The states tasks wait on are trio_util values: whether a client is attached, whether
a peer is bridged, and whether the writer has sent everything it was given.
"""

from __future__ import annotations

import functools
import logging

import trio
from trio_util import AsyncBool, wait_any

from ..chardev import ChrEvent, DeviceSubtype, SpiceChardev
from .early_words import EarlyWords
from .handover import Adoption, PeerHandover, detach_socket

# the stream backends' log lines keep the name they had before the split
log = logging.getLogger("trivmc.backends.stream")

OUT_LIMIT = 256 * 1024
RECEIVE_SIZE = 64 * 1024
DEFAULT_DRAIN = 2.0  # seconds a departed client's bytes have to reach its peer


class StreamBackend:
    """Bridges one peer stream at a time to a SpiceChardev."""

    name = "stream"
    per_session = False  # a peer per client session (connecting backends)
    can_stand = True  # under a usbredir channel it follows its peer (see connecting.py)

    def __init__(self, drain: float = DEFAULT_DRAIN) -> None:
        self.chardev: SpiceChardev | None = None
        self.peer: trio.abc.Stream | None = None
        self.session = 0  # client sessions seen (OPENED events)
        self.drain = drain
        self.dropped = 0  # bytes for a peer that went away or a session that ended
        self._dropped_at_leave = 0  # `dropped` when the client left (CLOSED)
        self.peers_served = 0
        self.breaks = 0
        self._attached = AsyncBool(False)  # a client is attached (OPENED, not CLOSED)
        self._bridging = AsyncBool(False)  # a peer is bridged (`bridge` runs)
        self._bridge_scope: trio.CancelScope | None = None
        self._out = bytearray()  # for the peer, not handed to it yet
        self._sending = 0  # bytes the peer's send_all has and has not finished with
        # the writer has nothing left to send (True implies out_bytes == 0); `read`
        # clears it, the writer sets it when it finds nothing more
        self._out_idle = AsyncBool(True)
        self._early = EarlyWords()  # a standing peer's first words, kept for a client
        self._peer_had_client = False  # the current peer has served a client
        self._ending_session = False  # the peer is being closed at a session boundary
        self.ended_at_boundary = False  # the last peer was closed by a session boundary
        self.spoke = False  # the current (or last) peer has sent something
        # handover (handover.py): the reader stops between reads, the bridge lets go
        # of its peer without closing it, and a backend may start from an adopted peer
        self.adoption: Adoption | None = None
        # the peer went to another process: nothing more here (until `reclaim`)
        self._released = AsyncBool(False)
        self._stop_reading = False  # between two reads (a bool: read per chunk) ...
        self._resume = trio.Event()  # ... until this is set (`reclaim`)
        self._in_receive = False  # the reader waits in receive_some (nothing in hand)
        self._reader_scope: trio.CancelScope | None = None
        self._reader_stopped = trio.Event()
        self._releasing = False
        self._handover: PeerHandover | None = None
        self._in_flight: bytearray | None = None  # what the writer is sending

    @property
    def released(self) -> bool:
        """The peer (or listener) went to another process: no peer until `reclaim()`."""
        return bool(self._released.value)

    @released.setter
    def released(self, value: bool) -> None:
        self._released.value = value

    @property
    def standing(self) -> bool:
        """Under a usbredir channel the backend follows its peer as QEMU's usb-redir
        does (connecting.py): known from the frontend it runs with, never set from
        outside."""
        chardev = self.chardev
        return chardev is not None and chardev.subtype is DeviceSubtype.USBREDIR

    @property
    def client_attached(self) -> bool:
        """A client is attached (between its OPENED and CLOSED)."""
        return bool(self._attached.value)

    # ---- CharBackend -----------------------------------------------------------

    @property
    def out_bytes(self) -> int:
        """Bytes taken for the peer and not yet sent to it."""
        return len(self._out) + self._sending

    def can_read(self) -> int:
        """Room below OUT_LIMIT for the current peer; 0 without one."""
        if self.peer is None or not self._peer_had_client:
            return 0  # (a standing peer takes bytes only from its own session's client)
        return max(0, OUT_LIMIT - self.out_bytes)

    def read(self, data: memoryview) -> None:
        """Queue `data` for the peer (the bridge's writer sends it)."""
        self._out += data
        self._out_idle.value = False

    def event(self, event: ChrEvent) -> None:
        """A client attached (OPENED) or left (CLOSED); a BREAK is counted and ignored."""
        if event == ChrEvent.BREAK:
            self.breaks += 1
            log.info("%s: BREAK from the client (a byte stream has no break: ignored)", self.name)
            return
        self._attached.value = event == ChrEvent.OPENED
        if self.client_attached:
            self.session += 1
            if self.peer is not None and not self._peer_had_client:
                self._peer_had_client = True
                assert self.chardev is not None
                self._early.hand_over(self.chardev)
        else:
            self._dropped_at_leave = self.dropped

    async def wait_client(self, attached: bool) -> None:
        """Return once a client is attached (`attached`) or none is, as seen when this
        task runs (a client that came and went before it did is not waited for)."""
        while self.client_attached != attached:
            await self._attached.wait_value(attached)

    # ---- bridging one peer -----------------------------------------------------

    async def _peer_to_chardev(self, stream: trio.abc.Stream) -> None:
        while True:
            if await self._read_peer(stream):
                return  # the peer closed its side
            # stopped for a handover: the writer goes on until the peer is released
            self._reader_stopped.set()  # (or reading goes on after a failed one)
            await self._resume.wait()
            self._reader_stopped = trio.Event()

    async def _read_peer(self, stream: trio.abc.Stream) -> bool:
        """Read the peer until it closes (True) or `stop_reading` (False)."""
        assert self.chardev is not None
        with trio.CancelScope() as self._reader_scope:
            while not self._stop_reading:
                self._in_receive = True  # (stop_reading may cancel: nothing is in hand)
                data = await stream.receive_some(RECEIVE_SIZE)
                self._in_receive = False
                if not data:
                    log.info("%s: peer closed its side", self.name)
                    return True
                self.spoke = True
                if self.standing and not self.chardev.fe_open:
                    # QEMU's usb-redir accepts a connection as soon as its chardev
                    # exists, but speaks (its hello) only once the device is there
                    self.chardev.set_fe_open(True)
                if not self._peer_had_client:  # a standing peer before its client
                    full = self._early.keep(data)
                    del data
                    if full:
                        self._in_receive = True
                        await self.wait_client(True)  # read on once a client took it
                        self._in_receive = False
                    continue
                await self.chardev.send(data)
                del data  # not kept alive while waiting for the next read
        return False

    async def _chardev_to_peer(self, stream: trio.abc.Stream) -> None:
        assert self.chardev is not None
        while True:
            if not self._out:
                self._out_idle.value = True
                await self._out_idle.wait_value(False)
                continue
            # handed over as it is (no copy), and a fresh buffer takes what comes next,
            # so no buffer keeps the capacity of a past burst
            data, self._out = self._out, bytearray()
            self._sending = len(data)
            self._in_flight = data
            await self._send_counted(stream, data)
            self._sending = 0  # (left set when cancelled: `_drop_out` counts the rest)
            self._in_flight = None
            del data  # sent: not kept alive while waiting for more
            self.chardev.accept_input()

    async def _send_counted(self, stream: trio.abc.Stream, data: bytearray) -> None:
        """Send `data`, keeping `_sending` at what the peer has not taken yet, so that a
        send cancelled half-way counts as dropped only what never left. A socket's
        `send` is all-or-nothing under cancellation (trio's guarantee), so with a
        socket the count is exact; other streams count their whole send."""
        sock = getattr(stream, "socket", None)
        if sock is None:
            await stream.send_all(data)
            return
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                with view[sent:] as rest:
                    n = await sock.send(rest)
                sent += n
                self._sending -= n

    def _drop_out(self) -> int:
        """Drop the bytes waiting for the peer (it is gone, or its session ended); the
        writer is not running (it ended with the bridge)."""
        dropped = len(self._out) + self._sending
        self._out = bytearray()
        self._sending = 0
        self._in_flight = None
        self.dropped += dropped
        self._out_idle.value = True  # nothing is left for it: `wait_out_drained` returns
        return dropped

    async def wait_out_drained(self) -> None:
        """Return once every byte taken for the peer was sent to it (or there is no
        peer any more: then they are dropped)."""
        while self.out_bytes and self.peer is not None:
            await self._out_idle.wait_value(True)

    async def wait_undeliverable(self) -> None:
        """Return once the departed client's bytes can reach no peer any more: a
        per-session peer that is gone is never replaced for a client that has left.
        A persistent pipe may get a peer later, so it never returns."""
        if not self.per_session:
            await trio.sleep_forever()
        while self.peer is not None and self._peer_had_client:
            await self._bridging.wait_value(False)  # (a peer is set only while bridging)

    async def end_session(self, deadline: float) -> int:
        """The client left and the device handed over all it sent: a per-session peer
        gets until `deadline` (trio time) to take the rest, then it is closed; return
        the bytes of the departed client dropped since it left (by the bridge too, when
        the peer went or was closed with bytes left). A persistent pipe keeps its peer
        and its bytes (0)."""
        if not self.per_session or self._stop_reading:
            return 0  # (in a handover the peer, and its session, move on)
        with trio.move_on_at(deadline):
            await self.wait_out_drained()
        self.peer = None  # from now on nothing more is taken for it
        if self._bridge_scope is not None:
            self._ending_session = True
            self._bridge_scope.cancel()
            # its CLOSED is the old session's, not the next's
            await self._bridging.wait_value(False)
        self._drop_out()
        return self.dropped - self._dropped_at_leave

    async def bridge(
        self, stream: trio.abc.Stream, adopted: PeerHandover | None = None, own: bool = False
    ) -> None:
        """Serve `stream` as the peer until it closes or its session ends; never raises
        for the peer's failure; bytes left for it are dropped, not carried on.
        `adopted`: a peer from another process's handover, with its state. After a
        release it returns only after `reclaim()`, and closes `stream` unless `own` (a
        peer that came before the release: it goes with the handover)."""
        assert self.chardev is not None
        if self.released and not own:
            await trio.aclose_forcefully(stream)
            await self._released.wait_value(False)
            return
        self.peer = stream
        self.peers_served += 1
        self._bridging.value = True
        self._early.clear()
        if adopted is None:
            self._peer_had_client = self.client_attached or not self.standing
            self.spoke = False  # the peer has sent something
        else:
            self._peer_had_client = adopted.had_client or not self.standing
            self.spoke = adopted.spoke
            self._early.keep(adopted.early)
            self.read(memoryview(adopted.unsent))  # for the peer before anything else
        if not self.standing or self.spoke:
            self.chardev.set_fe_open(True)  # (a standing peer: once it has spoken)
        self.chardev.accept_input()
        try:
            with trio.CancelScope() as self._bridge_scope:
                try:  # until the peer ends (the writer never does)
                    await wait_any(
                        functools.partial(self._peer_to_chardev, stream),
                        functools.partial(self._chardev_to_peer, stream),
                    )
                finally:
                    if self._releasing:
                        self._handover = self._let_go(stream)
                    await trio.aclose_forcefully(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            why = "; ".join(str(e.__cause__ or e) for e in group.exceptions)
            log.warning("%s: peer lost: %s", self.name, why)
        finally:
            self._bridge_scope = None
            if self.peer is stream:
                self.peer = None
            dropped = self._drop_out()  # (also: `end_session` need not wait)
            if dropped and not self._ending_session:  # (a boundary logs its own drops)
                log.warning("%s: %d bytes for a peer that is gone: dropped", self.name, dropped)
            self._early.clear()
            self.ended_at_boundary = self._ending_session
            if not (self.standing and self._ending_session) and not self.released:
                self.chardev.set_fe_open(False)  # (a standing peer is replaced at once)
            self._ending_session = False
            self._bridging.value = False  # (also: `wait_undeliverable` looks again)
        await self._released.wait_value(False)  # no peer of its own after a handover

    # ---- handover (handover.py, docs/handover.md) ---------------------------------

    async def stop_reading(self) -> None:
        """Stop reading the peer between two reads (what was read is handed to the
        chardev first); the writer goes on. Returns at once without a peer."""
        if not self._stop_reading:
            self._stop_reading, self._resume = True, trio.Event()
        if self.peer is None or self._reader_scope is None or self._reader_stopped.is_set():
            return  # (no scheduling point then)
        if self._in_receive:
            self._reader_scope.cancel()  # a receive cancelled has taken nothing
        # (or the peer ended meanwhile: the bridge ends)
        not_bridging = functools.partial(self._bridging.wait_value, False)
        await wait_any(self._reader_stopped.wait, not_bridging)

    async def release_peer(self, drain: float) -> PeerHandover | None:
        """Let go of the peer for another process: reading stops, the writer gets up to
        `drain` seconds to send what it has, then the socket leaves trio unclosed,
        with the bytes still unsent and a standing peer's early words. None without a
        peer (or a peer that is not a socket: it is closed). From then on this backend
        opens no peer of its own (`released`)."""
        await self.stop_reading()
        self.released = True
        if self.peer is None or self._bridge_scope is None:
            return None
        with trio.move_on_after(drain):
            await self.wait_out_drained()
        self._releasing = True
        self._bridge_scope.cancel()
        await self._bridging.wait_value(False)
        handover, self._handover = self._handover, None
        return handover

    def reclaim(self) -> None:
        """A handover failed: read the peer again where the reader stopped (between
        two reads: nothing lost), or find a new one if it went to the other process."""
        self._stop_reading, self._releasing = False, False
        self._resume.set()
        handover, self._handover = self._handover, None
        if handover is not None:  # let go of, but never sent: the peer is lost
            handover.close()
        if self.released and self.peer is None and self.chardev is not None:
            self.chardev.set_fe_open(False)  # (the peer that kept it open went)
        self.released = False

    def _let_go(self, stream: trio.abc.Stream) -> PeerHandover | None:
        """The bridge's last step in a release: the socket, and what is in flight."""
        sock = detach_socket(stream)
        if sock is None:
            return None
        unsent = b""
        if self._in_flight is not None and self._sending:
            unsent = bytes(self._in_flight[len(self._in_flight) - self._sending :])
        unsent += self._out
        self._out, self._sending, self._in_flight = bytearray(), 0, None
        return PeerHandover(sock, unsent, self._early.data, self._peer_had_client, self.spoke)

    async def bridge_adopted(self) -> bool:
        """Wait for `adoption` (when one was set) and bridge the peer it brings; False
        when there was none to wait for or it brought none."""
        adoption, self.adoption = self.adoption, None
        if adoption is None:
            return False
        peer = await adoption.take()
        if peer is None:
            return False
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(peer.sock))
        log.info("%s: bridging the peer handed over by the previous process", self.name)
        await self.bridge(stream, adopted=peer)
        return True

    async def run(self, chardev: SpiceChardev) -> None:
        """Serve `chardev` until cancelled: `serve`'s peer tasks run in nurseries it owns."""
        self.chardev = chardev
        await self.serve()

    async def serve(self) -> None:  # pragma: no cover - subclasses
        """Find peers and bridge them, one at a time, until cancelled (subclasses)."""
        raise NotImplementedError
