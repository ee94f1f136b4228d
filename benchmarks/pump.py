"""The raw loopback socket pump: the physical limit each benchmark row is set against.

No SPICE, no framing: the same payload bytes over plain TCP on 127.0.0.1, moved with
large `sendall`s and `recv_into` a reusable buffer. Standard library only; runs as its
own process on each side, like the servers and load clients it stands beside.

    python pump.py serve sink|echo|source --port P [--total N] [--many]
    python pump.py send --msg-size S --total N --port P     # waits for the sink's record
    python pump.py recv --total N --port P
    python pump.py echo --msg-size S --count C --port P
    python pump.py link --count C --port P                  # two connects + a round trip

Each client prints one JSON line with the same keys as `raw_client.py` (MBps,
msgs_per_s, median_us, p99_us, median_ms).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import struct
import sys
import threading
import time

BATCH = 4 << 20
RECV = 1 << 20
PATTERN = bytes(i % 251 for i in range(251)) * ((RECV // 251) + 2)


class _Conn:
    """One accepted connection of the pump server (non-blocking)."""

    def __init__(self, sock: socket.socket, mode: str, total: int) -> None:
        self.sock = sock
        self.mode = mode
        self.total = total
        self.count = 0
        self.first_ns = 0
        self.out = bytearray()
        self.sent = 0  # source: pattern bytes sent so far
        self.events = 0  # what the selector watches for now


def _serve_one(sock: socket.socket, mode: str, total: int) -> None:
    """One connection on a blocking socket in its own thread: the tightest Python loop
    (one big `recv_into` or `sendall` per system call, the GIL released in each)."""
    buf = bytearray(RECV)
    view = memoryview(buf)
    count = first_ns = 0
    with sock:
        try:
            if mode == "source":
                pattern, sent = memoryview(PATTERN), 0
                while sent < total:
                    size = min(RECV, total - sent)
                    sock.sendall(pattern[sent % 251 : sent % 251 + size])
                    sent += size
            while n := sock.recv_into(buf):
                if mode == "echo":
                    sock.sendall(view[:n])
                elif mode == "sink":
                    now = time.perf_counter_ns()
                    first_ns = first_ns if count else now
                    count += n
                    if total and count >= total:
                        sock.sendall(b"TRIVDONE" + struct.pack("<QQ", count, now - first_ns))
                        count = 0
        except OSError:
            pass


def serve_threads(mode: str, port: int, total: int) -> None:
    """Serve until killed, a thread per connection (for the rows with one client)."""
    lst = socket.create_server(("127.0.0.1", port), backlog=128)
    print(f"LISTENING port={port}", flush=True)
    while True:
        sock, _ = lst.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve_one, args=(sock, mode, total), daemon=True).start()


def serve(mode: str, port: int, total: int) -> None:
    """Serve until killed, all connections in one selector loop (for the 1000-session
    row): `sink` counts and reports `TRIVDONE` every `total` bytes, `echo` returns what
    it reads, `source` sends each connection `total` bytes."""
    sel = selectors.DefaultSelector()
    lst = socket.create_server(("127.0.0.1", port), backlog=4096)
    lst.setblocking(False)
    sel.register(lst, selectors.EVENT_READ, None)
    buf = bytearray(RECV)
    view = memoryview(buf)
    pattern = memoryview(PATTERN)
    print(f"LISTENING port={port}", flush=True)

    def want(conn: _Conn) -> None:
        writing = bool(conn.out) or (conn.mode == "source" and conn.sent < conn.total)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        if events != conn.events:  # a system call only when the interest changes
            conn.events = events
            sel.modify(conn.sock, events, conn)

    def close(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    while True:
        for key, events in sel.select():
            if key.data is None:
                sock, _ = lst.accept()
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Conn(sock, mode, total)
                sel.register(sock, selectors.EVENT_READ, conn)
                conn.events = selectors.EVENT_READ
                want(conn)
                continue
            conn = key.data
            if events & selectors.EVENT_READ:
                try:
                    n = conn.sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except OSError:
                    n = 0
                if n == 0:
                    close(conn)
                    continue
                if n > 0:
                    if conn.mode == "echo":
                        conn.out += view[:n]
                    elif conn.mode == "sink":
                        now = time.perf_counter_ns()
                        if conn.count == 0:
                            conn.first_ns = now
                        conn.count += n
                        if conn.total and conn.count >= conn.total:
                            took = now - conn.first_ns
                            conn.out += b"TRIVDONE" + struct.pack("<QQ", conn.count, took)
                            conn.count = 0
            if events & selectors.EVENT_WRITE or conn.out:
                try:
                    if conn.out:
                        k = conn.sock.send(conn.out)
                        del conn.out[:k]
                    elif conn.mode == "source" and conn.sent < conn.total:
                        start = conn.sent % 251
                        size = min(RECV, conn.total - conn.sent)
                        conn.sent += conn.sock.send(pattern[start : start + size])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(conn)
                    continue
            want(conn)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("pump server closed the connection")
        out += chunk
    return bytes(out)


def send(port: int, msg_size: int, total: int) -> dict[str, object]:
    n_msgs = total // msg_size
    total = n_msgs * msg_size
    batch = PATTERN[:msg_size] * max(1, min(n_msgs, BATCH // msg_size))
    sock = _connect(port)
    t0 = time.perf_counter()
    left = total
    while left:
        chunk = memoryview(batch)[: min(left, len(batch))]
        sock.sendall(chunk)
        left -= len(chunk)
    record = _read_exact(sock, 24)
    secs = time.perf_counter() - t0
    sock.close()
    if record[:8] != b"TRIVDONE":
        raise ConnectionError(f"bad record {record!r}")
    return {
        "mode": "send",
        "total": total,
        "secs": secs,
        "MBps": round(total / secs / 1e6, 2),
        "msgs_per_s": round(n_msgs / secs),
    }


def recv(port: int, total: int) -> dict[str, object]:
    sock = _connect(port)
    buf = bytearray(RECV)
    got = 0
    t0 = time.perf_counter()
    while got < total:
        n = sock.recv_into(buf)
        if n == 0:
            raise ConnectionError("pump server closed early")
        got += n
    secs = time.perf_counter() - t0
    sock.close()
    return {"mode": "recv", "total": got, "secs": secs, "MBps": round(got / secs / 1e6, 2)}


def echo(port: int, msg_size: int, count: int, warmup: int = 50) -> dict[str, object]:
    sock = _connect(port)
    payload = PATTERN[:msg_size]
    rtts: list[float] = []
    for i in range(count + warmup):
        t0 = time.perf_counter()
        sock.sendall(payload)
        _read_exact(sock, msg_size)
        if i >= warmup:
            rtts.append((time.perf_counter() - t0) * 1e6)
    sock.close()
    rtts.sort()
    return {
        "mode": "echo",
        "median_us": round(statistics.median(rtts), 1),
        "p99_us": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 1),
    }


def link(port: int, count: int) -> dict[str, object]:
    times: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        socks = []
        for _ in range(2):  # main + port channel
            s = _connect(port)
            s.sendall(b"x" * 16)
            _read_exact(s, 16)
            socks.append(s)
        times.append((time.perf_counter() - t0) * 1e3)
        for s in socks:
            s.close()
    return {"mode": "link", "median_ms": round(statistics.median(times), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["serve", "send", "recv", "echo", "link"])
    p.add_argument("device", nargs="?", choices=["sink", "echo", "source"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--msg-size", type=int, default=65536)
    p.add_argument("--total", type=int, default=64 << 20)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--many", action="store_true", help="serve: one selector loop for all")
    a = p.parse_args()
    if a.mode == "serve":
        try:
            (serve if a.many else serve_threads)(a.device or "echo", a.port, a.total)
        except KeyboardInterrupt:
            pass
        return 0
    if a.mode == "send":
        res = send(a.port, a.msg_size, a.total)
    elif a.mode == "recv":
        res = recv(a.port, a.total)
    elif a.mode == "echo":
        res = echo(a.port, a.msg_size, a.count)
    else:
        res = link(a.port, a.count)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
