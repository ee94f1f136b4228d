"""trivmc's own link-time client: blocking sockets driven by the sans-IO `trivmc.protocol`.

    python benchmarks/link_client.py --port P --count C [--port-channel-id 0] [--password PW]

Each session: TCP connect + main link, MAIN_INIT, ATTACH_CHANNELS -> CHANNELS_LIST,
then TCP connect + port link with the session id, PORT_INIT; then both close. It does
what `raw_client.py link` does, without that client's own per-channel costs (a 4 MiB
buffer and an upkeep thread per session), so the servers' part of the link time shows.
Prints one JSON line: median_ms, min_ms, max_ms over every session, and for the last 50
(the sustained rate, once a server's stock of anything made ahead is spent)
last50_median_ms and last50_per_s (sessions per second).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    Linked,
    LinkFailed,
    LinkReplyReceived,
    MainInit,
    MessageDecoder,
    MessageEncoder,
    MsgcMain,
    MsgMain,
    MsgVmc,
)

LAST = 50  # the sessions of the sustained figures


class Linked1:
    """One linked channel on a blocking socket."""

    def __init__(
        self, port: int, conn_id: int, ctype: int, cid: int, password: str | None
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        machine = ClientLink(conn_id, ctype, cid, password=password)
        self.sock.sendall(machine.initiate())
        linked: Linked | None = None
        while linked is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed during the link")
            for ev in machine.feed(data):
                if isinstance(ev, LinkFailed):
                    raise ConnectionError(f"link refused: {ev.code.name}")
                if isinstance(ev, LinkReplyReceived):
                    self.sock.sendall(ev.data)
                if isinstance(ev, Linked):
                    linked = ev
        self.encoder = MessageEncoder(linked.mini_header)
        self.decoder = MessageDecoder(linked.mini_header, 1 << 20)
        self.pending = list(self.decoder.feed(machine.trailing))

    def wait_for(self, mtype: int) -> bytes:
        while True:
            while self.pending:
                msg = self.pending.pop(0)
                if msg.type == mtype:
                    return bytes(msg.body)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"server closed before message {mtype}")
            self.pending = list(self.decoder.feed(data))

    def close(self) -> None:
        self.sock.close()


def session(port: int, channel_id: int, password: str | None) -> None:
    main = Linked1(port, 0, ChannelType.MAIN, 0, password)
    session_id = MainInit.decode(main.wait_for(MsgMain.INIT)).session_id
    main.sock.sendall(main.encoder.encode(MsgcMain.ATTACH_CHANNELS, b""))
    main.wait_for(MsgMain.CHANNELS_LIST)
    vmc = Linked1(port, session_id, ChannelType.PORT, channel_id, password)
    vmc.wait_for(MsgVmc.PORT_INIT)
    vmc.close()
    main.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--port-channel-id", type=int, default=0)
    p.add_argument("--password", help="the ticket (default: none, ticketing disabled)")
    a = p.parse_args()
    times = []
    for _ in range(a.count):
        t0 = time.perf_counter()
        session(a.port, a.port_channel_id, a.password)
        times.append((time.perf_counter() - t0) * 1e3)
    last = times[-LAST:]
    print(
        json.dumps(
            {
                "mode": "link",
                "count": a.count,
                "median_ms": round(statistics.median(times), 3),
                "min_ms": round(min(times), 3),
                "max_ms": round(max(times), 3),
                "last50_median_ms": round(statistics.median(last), 3),
                "last50_per_s": round(len(last) / sum(last) * 1e3, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
