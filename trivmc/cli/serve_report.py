"""What `trivmc serve` tells its user: the URIs clients use, per-channel counters
(`--stats`), and the status line systemd shows."""

from __future__ import annotations

import trio

from ..server import Server
from ..server.sockets import format_address


def uri_for(addr: object, tls_addr: object = None) -> str:
    """The spice:// URI a client (remote-viewer) uses for a bound address."""
    if isinstance(addr, str):
        return f"spice+unix://{addr}"
    if addr is None:
        assert isinstance(tls_addr, tuple)
        host = format_address(tls_addr).rpartition(":")[0]
        return f"spice://{host}?tls-port={tls_addr[1]}"
    if isinstance(tls_addr, tuple) and tls_addr[0] == addr[0]:  # type: ignore[index]
        host = format_address(addr).rpartition(":")[0]
        return f"spice://{host}?port={addr[1]}&tls-port={tls_addr[1]}"  # type: ignore[index]
    return f"spice://{format_address(addr)}"


def stats_lines(server: Server) -> list[str]:
    """One line of counters per channel."""
    lines = []
    for ch in server.channels.values():
        st = ch.device.stats
        lines.append(
            f"{ch.label}: clients {1 if ch.client else 0} (served {ch.clients_served},"
            f" refused {ch.clients_refused}) in: DATA {st.in_data} B, lz4 {st.in_compressed}"
            f" -> {st.in_decompressed} B; out: DATA {st.out_data} B, lz4"
            f" {st.out_uncompressed} -> {st.out_compressed} B; device written {st.written} B,"
            f" read {st.read} B; tokens free {ch.device.tokens_free}"
        )
    return lines


async def print_stats(server: Server, every: float) -> None:
    while True:
        await trio.sleep(every)
        for line in stats_lines(server):
            print(f"trivmc stats: {line}", flush=True)


def status_line(server: Server) -> str:
    """What systemd shows as the service's status once it serves."""
    where = [format_address(a) for a in server.addresses]
    where += [f"{format_address(a)} (TLS)" for a in server.tls_addresses]
    return f"serving {', '.join(where)}; {len(server.channels)} channels"
