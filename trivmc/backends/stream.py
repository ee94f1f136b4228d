"""Stream backends: a socket (connect or listen, TCP or unix) or a child process.

One peer stream at a time is bridged to the chardev. While there is no peer,
`can_read()` is 0: client data waits in the char device's queue under its budget,
so nothing accepted is dropped while the backend is away. The port sees OPENED when a
peer is up and CLOSED when it goes (PORT_EVENT for port clients).

Connecting backends (tcp:, unix:, exec:) open a peer for each SPICE client session and
close it when the session ends, so every client starts with a fresh peer (what QEMU's
usb-redir and QMP expect): the session boundary (`end_session`, called by the channel
once the device handed over everything the departed client sent) gives the peer until
the drain deadline to take those bytes, then closes it; what it did not take is
dropped and counted (`dropped`), never carried to another peer. A peer opened for a
client that has left is closed unused. They reconnect with a bounded backoff within a
session (`reconnect=SECONDS` is the longest wait; 0 disables). Listening backends
(tcp-listen:, unix-listen:) are one persistent pipe: they accept one peer at a time
for as long as they run, across client sessions. A peer's failure (a reset
included) is logged with its cause and never raises out of the backend.

A usbredir channel makes its backend *standing* (`standing = True`, set by the
channel), to follow QEMU's usb-redir the way spice-server + QEMU do: a connecting
backend keeps a connection to QEMU while no client is attached (reconnecting with
the backoff while QEMU is away), holds what QEMU says first (its usbredir hello, at
most EARLY_LIMIT bytes) for the next client, and after each client's session boundary
closes that connection and opens a fresh one, so QEMU resets its device between two
sessions. The guest side is open (`set_fe_open`: the channel is offered) while a peer
is connected; a peer that goes away, or a reconnect that fails, closes it (the
channel is withdrawn and its client's channel closed). The guest side counts as open
once the peer has spoken (QEMU's usb-redir chardev accepts connections before its
device exists, and sends its hello once it does). Closing the peer at a session
boundary does not close it: the fresh connection follows at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess

import trio

from ..chardev import ChrEvent, SpiceChardev

log = logging.getLogger(__name__)

OUT_LIMIT = 256 * 1024
RECEIVE_SIZE = 64 * 1024
FIRST_BACKOFF = 0.1
DEFAULT_RECONNECT = 2.0
DEFAULT_DRAIN = 2.0  # seconds a departed client's bytes have to reach its peer
EARLY_LIMIT = 64 * 1024  # what a standing peer may say before a client attaches
STANDING_FIRST_BACKOFF = 0.01  # a standing backend's first reconnect delay


class StreamBackend:
    """Bridges one peer stream at a time to a SpiceChardev."""

    name = "stream"
    per_session = False  # a peer per client session (connecting backends)
    standing = False  # follow the peer as a usbredir channel does (see the module doc)

    def __init__(self, drain: float = DEFAULT_DRAIN) -> None:
        self.chardev: SpiceChardev | None = None
        self.peer: trio.abc.Stream | None = None
        self.client_attached = False
        self.session = 0  # client sessions seen (OPENED events)
        self.drain = drain
        self.dropped = 0  # bytes for a peer that went away or a session that ended
        self._dropped_at_leave = 0  # `dropped` when the client left (CLOSED)
        self.peers_served = 0
        self.breaks = 0
        self._bridge_scope: trio.CancelScope | None = None
        self._bridge_done = trio.Event()  # the current (or last) bridge has ended
        self._bridge_done.set()
        self._out = bytearray()  # for the peer, not handed to it yet
        self._sending = 0  # bytes the peer's send_all has and has not finished with
        self._out_ready = trio.Event()
        self._out_drained = trio.Event()
        self._client_changed = trio.Event()
        self._early = bytearray()  # a standing peer's first words, kept for a client
        self._peer_had_client = False  # the current peer has served a client
        self._ending_session = False  # the peer is being closed at a session boundary
        self.ended_at_boundary = False  # the last peer was closed by a session boundary
        self.spoke = False  # the current (or last) peer has sent something

    @property
    def opens_later(self) -> bool:
        """A standing backend's guest side opens once its peer is connected."""
        return self.standing

    # ---- CharBackend -----------------------------------------------------------

    @property
    def out_bytes(self) -> int:
        """Bytes taken for the peer and not yet sent to it."""
        return len(self._out) + self._sending

    def can_read(self) -> int:
        if self.peer is None or not self._peer_had_client:
            return 0  # (a standing peer takes bytes only from its own session's client)
        return max(0, OUT_LIMIT - self.out_bytes)

    def read(self, data: memoryview) -> None:
        self._out += data
        self._out_ready.set()

    def event(self, event: ChrEvent) -> None:
        if event == ChrEvent.BREAK:
            self.breaks += 1
            log.info("%s: BREAK from the client (a byte stream has no break: ignored)", self.name)
            return
        self.client_attached = event == ChrEvent.OPENED
        if self.client_attached:
            self.session += 1
            if self.peer is not None and not self._peer_had_client:
                self._peer_had_client = True
                self._hand_over_early()
        else:
            self._dropped_at_leave = self.dropped
        self._client_changed.set()
        self._client_changed = trio.Event()

    async def wait_client(self, attached: bool) -> None:
        while self.client_attached != attached:
            await self._client_changed.wait()

    # ---- bridging one peer -----------------------------------------------------

    def _hand_over_early(self) -> None:
        """The first client of a standing peer attached: what the peer said before goes
        to it first. It all fits: at most EARLY_LIMIT + one read (128 KiB), and the
        chardev's pending data (limit 256 KiB) was cleared when the last client left."""
        assert self.chardev is not None
        if self._early:
            early, self._early = self._early, bytearray()
            taken = self.chardev.chr_write(early)
            assert taken == len(early), "the early words fit the chardev's pending room"

    async def _peer_to_chardev(self, stream: trio.abc.Stream) -> None:
        assert self.chardev is not None
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            self.spoke = True
            if self.standing and not self.chardev.fe_open:
                # QEMU's usb-redir accepts a connection as soon as its chardev exists,
                # but speaks (its hello) only once the device is there: that is "open"
                self.chardev.set_fe_open(True)
            if not self._peer_had_client:  # a standing peer before its client: keep it
                self._early += data
                del data
                if len(self._early) >= EARLY_LIMIT:
                    await self.wait_client(True)  # read on once a client took it
                continue
            await self.chardev.send(data)
            del data  # not kept alive while waiting for the next read
        log.info("%s: peer closed its side", self.name)

    async def _chardev_to_peer(self, stream: trio.abc.Stream) -> None:
        assert self.chardev is not None
        while True:
            if not self._out:
                self._out_drained.set()
                self._out_drained = trio.Event()
                await self._out_ready.wait()
                self._out_ready = trio.Event()
                continue
            # handed over as it is (no copy), and a fresh buffer takes what comes next,
            # so no buffer keeps the capacity of a past burst
            data, self._out = self._out, bytearray()
            self._sending = len(data)
            await self._send_counted(stream, data)
            self._sending = 0  # (left set when cancelled: `_drop_out` counts the rest)
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
        """Drop the bytes waiting for the peer (it is gone, or its session ended)."""
        dropped = len(self._out) + self._sending
        self._out = bytearray()
        self._sending = 0
        self.dropped += dropped
        return dropped

    async def wait_out_drained(self) -> None:
        """Return once every byte taken for the peer was sent to it (or there is no
        peer any more: then they are dropped)."""
        while (self._out or self._sending) and self.peer is not None:
            await self._out_drained.wait()

    async def wait_undeliverable(self) -> None:
        """Return once the departed client's bytes can reach no peer any more: a
        per-session peer that is gone is never replaced for a client that has left.
        A persistent pipe may get a peer later, so it never returns."""
        if not self.per_session:
            await trio.sleep_forever()
        while self.peer is not None and self._peer_had_client:
            await self._bridge_done.wait()

    async def end_session(self, deadline: float) -> int:
        """The client left and the device handed over all it sent: a per-session peer
        gets until `deadline` (trio time) to take the rest, then it is closed; return
        the bytes of the departed client dropped since it left (by the bridge too, when
        the peer went or was closed with bytes left). A persistent pipe keeps its peer
        and its bytes (0)."""
        if not self.per_session:
            return 0
        with trio.move_on_at(deadline):
            await self.wait_out_drained()
        self.peer = None  # from now on nothing more is taken for it
        if self._bridge_scope is not None:
            self._ending_session = True
            self._bridge_scope.cancel()
            await self._bridge_done.wait()  # its CLOSED is the old session's, not the next's
        self._drop_out()
        return self.dropped - self._dropped_at_leave

    async def bridge(self, stream: trio.abc.Stream) -> None:
        """Serve `stream` as the peer until it closes or its session ends; never raises
        for the peer's failure. Bytes left for it are dropped, not carried on."""
        assert self.chardev is not None
        self.peer = stream
        self.peers_served += 1
        self._bridge_done = done = trio.Event()
        self._peer_had_client = self.client_attached or not self.standing
        self._early = bytearray()
        self.spoke = False  # the peer has sent something
        if not self.standing:
            self.chardev.set_fe_open(True)  # (a standing peer: once it has spoken)
        self.chardev.accept_input()
        try:
            with trio.CancelScope() as self._bridge_scope:
                async with stream, trio.open_nursery() as nursery:

                    async def until_peer_ends() -> None:
                        await self._peer_to_chardev(stream)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_peer_ends)
                    nursery.start_soon(self._chardev_to_peer, stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            why = "; ".join(str(e.__cause__ or e) for e in group.exceptions)
            log.warning("%s: peer lost: %s", self.name, why)
        finally:
            self._bridge_scope = None
            if self.peer is stream:
                self.peer = None
            dropped = self._drop_out()
            if dropped and not self._ending_session:  # (a boundary logs its own drops)
                log.warning("%s: %d bytes for a peer that is gone: dropped", self.name, dropped)
            self._early = bytearray()
            self.ended_at_boundary = self._ending_session
            if not (self.standing and self._ending_session):
                self.chardev.set_fe_open(False)  # (a standing peer is replaced at once)
            self._ending_session = False
            self._out_drained.set()  # nothing is left for it: `end_session` need not wait
            self._out_drained = trio.Event()
            done.set()  # (also: `wait_undeliverable` looks again)

    async def run(self, chardev: SpiceChardev) -> None:
        self.chardev = chardev
        await self.serve()

    async def serve(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError


class ConnectingBackend(StreamBackend):
    """Opens a peer for each client session; reconnects with bounded backoff."""

    per_session = True

    def __init__(self, reconnect: float = DEFAULT_RECONNECT, drain: float = DEFAULT_DRAIN) -> None:
        super().__init__(drain)
        self.reconnect = reconnect
        self.connect_failures = 0

    async def open_peer(self) -> trio.abc.Stream:  # pragma: no cover - subclasses
        raise NotImplementedError

    async def serve(self) -> None:
        if self.standing:
            await self._serve_standing()
            return
        backoff = FIRST_BACKOFF
        last_session = self.session
        while True:
            await self.wait_client(True)
            session = self.session
            if session != last_session:  # a new client: its first retry comes soon
                backoff, last_session = FIRST_BACKOFF, session
            try:
                stream = await self.open_peer()
            except OSError as e:
                self.connect_failures += 1
                if self.reconnect <= 0:
                    log.warning("%s: cannot connect (%s); no reconnect", self.name, e)
                    await self.wait_client(False)
                    continue
                log.warning("%s: cannot connect (%s); retrying in %.1f s", self.name, e, backoff)
                with trio.move_on_after(backoff):
                    await self.wait_client(False)
                backoff = min(backoff * 2, self.reconnect)
                continue
            backoff = FIRST_BACKOFF
            if self.session != session or not self.client_attached:
                await trio.aclose_forcefully(stream)  # opened for a client that has left
                continue
            log.info("%s: connected", self.name)
            await self.bridge(stream)
            if self.client_attached and self.reconnect > 0:
                with trio.move_on_after(backoff):
                    await self.wait_client(False)
            elif self.client_attached:
                await self.wait_client(False)

    async def _serve_standing(self) -> None:
        """Keep a peer connected whether or not a client is attached: a fresh one after
        every session boundary, and again after the peer went away. Attempts start
        STANDING_FIRST_BACKOFF apart and double up to `reconnect`, so QEMU coming back
        soon after it left (a device re-plugged) is found within about as long again."""
        assert self.chardev is not None
        backoff = STANDING_FIRST_BACKOFF
        cap = self.reconnect if self.reconnect > 0 else DEFAULT_RECONNECT
        reported = False
        while True:
            try:
                stream = await self.open_peer()
            except OSError as e:
                self.connect_failures += 1
                self.chardev.set_fe_open(False)  # not reachable: the channel is withdrawn
                level = logging.DEBUG if reported else logging.WARNING
                log.log(level, "%s: cannot connect (%s); retrying", self.name, e)
                reported = True
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cap)
                continue
            reported = False
            log.info("%s: connected", self.name)
            started = trio.current_time()
            await self.bridge(stream)
            if self.spoke or trio.current_time() - started >= 1.0:
                # a real session (QEMU said its hello), not a peer that keeps closing
                backoff = STANDING_FIRST_BACKOFF
            if not self.ended_at_boundary:  # the peer went away: not at once
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cap)


class TcpConnectBackend(ConnectingBackend):
    def __init__(
        self,
        host: str,
        port: int,
        reconnect: float = DEFAULT_RECONNECT,
        drain: float = DEFAULT_DRAIN,
    ) -> None:
        super().__init__(reconnect, drain)
        self.host, self.port = host, port
        self.name = f"tcp:{host}:{port}"

    async def open_peer(self) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        return stream


class UnixConnectBackend(ConnectingBackend):
    def __init__(
        self, path: str, reconnect: float = DEFAULT_RECONNECT, drain: float = DEFAULT_DRAIN
    ) -> None:
        super().__init__(reconnect, drain)
        self.path = path
        self.name = f"unix:{path}"

    async def open_peer(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(self.path)


class ExecBackend(ConnectingBackend):
    """A child process per client: its stdin gets the client's bytes, its stdout goes
    back. It is killed and reaped when the client leaves."""

    def __init__(self, command: str) -> None:
        super().__init__(reconnect=0)
        self.command = command
        self.name = f"exec:{command}"
        self.processes_reaped = 0

    async def open_peer(self) -> trio.abc.Stream:
        argv = shlex.split(self.command)
        if not argv:
            raise OSError("empty command")
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert proc.stdin is not None and proc.stdout is not None
        return _ProcessStream(proc, self)


class _ProcessStream(trio.abc.HalfCloseableStream):
    """A child's stdin/stdout as one stream; closing it kills and reaps the child."""

    def __init__(self, proc: trio.Process, owner: ExecBackend) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin: trio.abc.SendStream = proc.stdin
        self._stdout: trio.abc.ReceiveStream = proc.stdout
        self.proc = proc
        self.owner = owner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stdin.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stdin.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stdout.receive_some(max_bytes)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(self._stdin)
                await trio.aclose_forcefully(self._stdout)
            finally:
                if self.proc.returncode is None:
                    self.proc.kill()
                await self.proc.wait()
                self.owner.processes_reaped += 1


class ListeningBackend(StreamBackend):
    """Accepts one peer at a time (the next waits in the backlog). `listening` is set
    once peers can connect."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = trio.Event()

    async def open_listener(self) -> trio.SocketListener:  # pragma: no cover
        raise NotImplementedError

    async def serve(self) -> None:
        listener = await self.open_listener()
        self.listening.set()
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    log.warning("%s: accept failed: %s", self.name, e)
                    await trio.sleep(FIRST_BACKOFF)
                    continue
                log.info("%s: peer connected", self.name)
                await self.bridge(stream)


class TcpListenBackend(ListeningBackend):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.name = f"tcp-listen:{host}:{port}"
        self.bound: tuple[str, int] | None = None

    async def open_listener(self) -> trio.SocketListener:
        (listener,) = (await trio.open_tcp_listeners(self.port, host=self.host))[:1]
        self.bound = listener.socket.getsockname()[:2]
        return listener


class UnixListenBackend(ListeningBackend):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.name = f"unix-listen:{path}"

    async def open_listener(self) -> trio.SocketListener:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen(1)
        return trio.SocketListener(sock)


class FileBackend:
    """Appends what the client sends to a file; nothing comes back."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.chardev: SpiceChardev | None = None
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - lives with the backend

    def can_read(self) -> int:
        return 1 << 20

    def read(self, data: memoryview) -> None:
        try:
            self._file.write(data)
            self.written += len(data)
        except OSError as e:
            log.error("file:%s: write failed, data lost: %s", self.path, e)

    def event(self, event: ChrEvent) -> None:
        pass

    async def run(self, chardev: SpiceChardev) -> None:
        self.chardev = chardev
        chardev.set_fe_open(True)
        try:
            await trio.sleep_forever()
        finally:
            self._file.close()
