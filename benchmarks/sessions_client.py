"""Many live sessions at once: the load client of the 1000-session benchmark row.

    python sessions_client.py spice --port P --per-server 250 --sessions 1000 --bytes 65536
    python sessions_client.py raw   --port P --sessions 1000 --bytes 65536

`spice` links, for session k, a main channel and port channel id k % PER_SERVER on the
server at port P + k // PER_SERVER; `raw` opens plain TCP connections to the pump's
echo server at P instead. Once all are linked it prints `CONNECTED n SECONDS` and waits
for a line on stdin (the harness reads the server's RSS then); each round every session
sends `--bytes` in 4 KiB writes through its echo device and reads them all back,
concurrently; then one JSON line gives each round's aggregate MB/s (bytes sent and
received back / time), and the sessions stay open until stdin closes.

The client is lean so that the server's cost shows, the same for both modes: one
process, plain non-blocking sockets and one `selectors` loop, no trio. `spice` links
with the sans-IO `trivmc.protocol` (`ClientLink`, blocking sockets, `LINK_BATCH`
sessions at a time) and then frames with its `MessageEncoder`/`MessageDecoder`; a
client-side `ChannelConnection` per channel answers SET_ACK and PING and sends the ACKs
of the server's window. Each 4 KiB write is one send() call: raw bytes, or one DATA
message (no LZ4: the cap is not advertised). A round ends when every session got back
as many bytes as it sent (more is an error, and so is a connection closed); the bytes
are counted, not compared (comparing would load the client, the raw column's limit).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time

from trivmc.protocol import (
    ChannelConnection,
    ChannelType,
    ClientLink,
    Linked,
    LinkFailed,
    LinkReplyReceived,
    MainInit,
    Message,
    MsgcMain,
    MsgcVmc,
    MsgMain,
    MsgVmc,
    Role,
)

WRITE = 4096
LINK_BATCH = 32  # sessions linked at once (each batch's links in flight together)
RECV = 256 * 1024
MAX_MESSAGE = 1 << 20
ROUND_TIMEOUT = 120.0
LINK_TIMEOUT = 30.0


class Channel:
    """One connection of a session: a socket, non-blocking once linked, and what is
    left to write on it. `spice`: `conn` is its client-side protocol state, which takes
    every message received and may have control messages (ACK_SYNC, ACK, PONG) to
    send; they go out between whole data writes. `raw`: `conn` is None."""

    def __init__(self, sock: socket.socket, conn: ChannelConnection | None) -> None:
        self.sock = sock
        self.conn = conn
        self.chunks: list[bytes] = []  # this round's writes, in order
        self.next_chunk = 0
        self.current = memoryview(b"")  # the write under way (a partial send's rest)
        self.expected = 0  # bytes of this round still to come back
        self.events = 0  # what the selector watches for now
        self.pending: list[Message] = []  # received while linking, not yet handled
        self.echoes = False  # a port channel (its DATA counted), not a main channel

    @property
    def writing(self) -> bool:
        return bool(
            len(self.current)
            or self.next_chunk < len(self.chunks)
            or (self.conn is not None and self.conn.has_data_to_send)
        )

    def flush(self) -> None:
        """Write until the socket would block or nothing is left; a control message
        goes out only between whole writes."""
        sock = self.sock
        while True:
            if not len(self.current):
                if self.conn is not None and self.conn.has_data_to_send:
                    self.current = memoryview(self.conn.data_to_send())
                elif self.next_chunk < len(self.chunks):
                    self.current = memoryview(self.chunks[self.next_chunk])
                    self.next_chunk += 1
                else:
                    return
            try:
                sent = sock.send(self.current)
            except (BlockingIOError, InterruptedError):
                return
            self.current = self.current[sent:]

    def received(self, data: memoryview) -> None:
        """Take bytes read from the socket (a view of a reused buffer: not kept)."""
        if self.conn is None:
            self.expected -= len(data)
        else:
            for msg in self.conn.decoder.feed(data):
                self.message(msg)
        if self.expected < 0:
            raise ConnectionError("more came back than was sent")

    def message(self, msg: Message) -> None:
        assert self.conn is not None
        event = self.conn.handle(msg)
        if self.echoes and isinstance(event, Message) and event.type == MsgVmc.DATA:
            self.expected -= len(event.body)


# ---- linking (blocking sockets) ---------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=LINK_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _start_link(port: int, conn_id: int, ctype: int, cid: int) -> tuple[socket.socket, ClientLink]:
    sock = _connect(port)
    machine = ClientLink(conn_id, ctype, cid)
    sock.sendall(machine.initiate())
    return sock, machine


def _finish_link(sock: socket.socket, machine: ClientLink) -> Channel:
    """Read the link through on a blocking socket; the linked channel."""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed during the link")
        for ev in machine.feed(data):
            if isinstance(ev, LinkFailed):
                raise ConnectionError(f"link refused: {ev.code.name}")
            if isinstance(ev, LinkReplyReceived):
                sock.sendall(ev.data)
            if isinstance(ev, Linked):
                conn = ChannelConnection(
                    Role.CLIENT, mini_header=ev.mini_header, max_message=MAX_MESSAGE
                )
                ch = Channel(sock, conn)
                ch.pending = list(conn.decoder.feed(machine.trailing))
                return ch


def _wait_for(ch: Channel, mtype: int) -> Message:
    """The next channel message of type `mtype` (blocking); the common ones answered,
    others of the channel's dropped."""
    assert ch.conn is not None
    while True:
        while ch.pending:
            event = ch.conn.handle(ch.pending.pop(0))
            if ch.conn.has_data_to_send:
                ch.sock.sendall(ch.conn.data_to_send())
            if isinstance(event, Message) and event.type == mtype:
                event.body = bytes(event.body)
                return event
        data = ch.sock.recv(65536)
        if not data:
            raise ConnectionError(f"server closed before message {mtype}")
        ch.pending = list(ch.conn.decoder.feed(data))


def link_spice(a: argparse.Namespace) -> tuple[list[Channel], list[Channel]]:
    """(the port channels, the main channels) of every session, linked `LINK_BATCH`
    sessions at a time: each step is started for the whole batch before its answers
    are read, so the server works on a batch's links together."""
    ports: list[Channel] = []
    mains: list[Channel] = []
    for first in range(0, a.sessions, LINK_BATCH):
        batch = range(first, min(first + LINK_BATCH, a.sessions))
        servers = [a.port + k // a.per_server for k in batch]
        started = [_start_link(p, 0, ChannelType.MAIN, 0) for p in servers]
        main = [_finish_link(*s) for s in started]
        ids = [MainInit.decode(_wait_for(m, MsgMain.INIT).body).session_id for m in main]
        for m in main:
            assert m.conn is not None
            m.sock.sendall(m.conn.encoder.encode(MsgcMain.ATTACH_CHANNELS))
        for m in main:
            _wait_for(m, MsgMain.CHANNELS_LIST)
        started = [
            _start_link(p, sid, ChannelType.PORT, k % a.per_server)
            for p, sid, k in zip(servers, ids, batch, strict=True)
        ]
        port = [_finish_link(*s) for s in started]
        for ch in port:
            _wait_for(ch, MsgVmc.PORT_INIT)
            ch.echoes = True
        mains += main
        ports += port
    return ports, mains


def link_raw(a: argparse.Namespace) -> list[Channel]:
    return [Channel(_connect(a.port), None) for _ in range(a.sessions)]


# ---- the echo rounds (one selector loop) -------------------------------------------


class Loop:
    """Every socket in one selector: the port channels (or raw connections) that echo,
    and the main channels, whose messages are only answered."""

    def __init__(self, pipes: list[Channel], mains: list[Channel]) -> None:
        self.sel = selectors.DefaultSelector()
        self.pipes = pipes
        self.buf = bytearray(RECV)
        self.view = memoryview(self.buf)
        for ch in pipes + mains:
            for msg in ch.pending:  # what came after the last message waited for
                ch.message(msg)
            ch.pending = []
            ch.sock.setblocking(False)
            ch.events = selectors.EVENT_READ
            self.sel.register(ch.sock, ch.events, ch)
            ch.flush()  # an answer to one of those
            self.want(ch)

    def want(self, ch: Channel) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if ch.writing else 0)
        if events != ch.events:  # a system call only when the interest changes
            ch.events = events
            self.sel.modify(ch.sock, events, ch)

    def echo_round(self, chunks: list[bytes], nbytes: int) -> float:
        """Every pipe writes `chunks` and reads `nbytes` back; the round's seconds."""
        t0 = time.perf_counter()
        for ch in self.pipes:
            ch.chunks, ch.next_chunk, ch.expected = chunks, 0, nbytes
            ch.flush()
            self.want(ch)
        waiting = len(self.pipes)
        buf, view = self.buf, self.view
        deadline = time.monotonic() + ROUND_TIMEOUT
        while waiting:
            ready = self.sel.select(1.0)
            if not ready and time.monotonic() > deadline:
                raise TimeoutError(f"{waiting} sessions still echoing")
            for key, events in ready:
                ch = key.data
                if events & selectors.EVENT_READ:
                    try:
                        n = ch.sock.recv_into(buf)
                    except (BlockingIOError, InterruptedError):
                        n = -1
                    if n == 0:
                        raise ConnectionError("a session was closed by the server")
                    if n > 0:
                        before = ch.expected
                        ch.received(view[:n])
                        if before and not ch.expected:
                            waiting -= 1
                if ch.writing:
                    ch.flush()
                self.want(ch)
        return time.perf_counter() - t0


def main(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    mains: list[Channel] = []
    if a.kind == "spice":
        pipes, mains = link_spice(a)
    else:
        pipes = link_raw(a)
    link_secs = time.perf_counter() - t0
    loop = Loop(pipes, mains)
    print(f"CONNECTED {len(pipes)} {link_secs:.3f}", flush=True)
    sys.stdin.readline()
    data = bytes(range(256)) * (WRITE // 256)
    count = -(-a.bytes // WRITE)
    nbytes = count * WRITE
    if a.kind == "spice":
        encoder = pipes[0].conn.encoder if pipes[0].conn else None
        if encoder is None or not encoder.mini_header:
            raise RuntimeError("the server declined the mini header")
        # with the mini header (no serial) a DATA message is the same bytes on every channel
        chunks = [encoder.encode(MsgcVmc.DATA, data)] * count
    else:
        chunks = [data] * count
    rounds = []
    for _ in range(a.rounds):
        secs = loop.echo_round(chunks, nbytes)
        rounds.append(round(2 * nbytes * a.sessions / secs / 1e6, 2))
    print(json.dumps({"sessions": a.sessions, "link_secs": link_secs, "MBps": rounds}))
    sys.stdout.flush()
    while sys.stdin.read(4096):
        pass
    for ch in pipes + mains:
        ch.sock.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["spice", "raw"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--per-server", type=int, default=250)
    p.add_argument("--bytes", type=int, default=65536)
    p.add_argument("--rounds", type=int, default=5)
    main(p.parse_args())
