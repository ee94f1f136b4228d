"""Prometheus metrics of a running `Server`: a collector and a small HTTP endpoint.

`ServerCollector` reads the live server at each scrape: nothing is counted twice,
and a removed channel's series go with it. `serve_metrics` answers `GET /metrics`
on a trio listener with prometheus_client's text format; it runs in the server's
own trio thread, so a scrape never reads the server's state in the middle of a
change (docs/operating.md, "Metrics", lists every metric and says why not
prometheus_client's threaded server).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..protocol import VMC_CHANNEL_TYPES, ChannelType, LinkError
from .accept import accept_loop
from .main_channel import MigrationOutcome
from .server import Server
from .sockets import close_quietly, format_address, listen_tcp

log = logging.getLogger(__name__)

CHANNEL_LABELS = ["type", "id", "name"]
MAX_REQUEST = 8192  # bytes of request head read at most
REQUEST_TIMEOUT = 10.0  # seconds for a scraper to send its request
MAX_SCRAPES = 16  # connections served at once; more are closed at once


def _channel_labels(channel_type: int, channel_id: int, name: str | None) -> list[str]:
    return [ChannelType(channel_type).name.lower(), str(channel_id), name or ""]


class ServerCollector:
    """A prometheus_client collector of one `Server`'s counters and gauges.

    Counters only grow while the server lives (a channel's restart from zero only
    when it is removed and added again); every link refusal reason and accepted
    channel type is present from the start, at 0."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield from self._server_metrics()
        yield from self._channel_metrics()

    def _server_metrics(self) -> Iterator[Metric]:
        s = self.server
        accepted = CounterMetricFamily(
            "trivmc_links_accepted", "Links that got OK, by channel type.", labels=["type"]
        )
        for ctype in (ChannelType.MAIN, *sorted(VMC_CHANNEL_TYPES)):
            accepted.add_metric([ctype.name.lower()], s.links_accepted[ctype])
        yield accepted
        refused = CounterMetricFamily(
            "trivmc_links_refused", "Links refused, by the error sent.", labels=["reason"]
        )
        for code in LinkError:
            if code != LinkError.OK:
                refused.add_metric([code.name], s.links_refused_by[code])
        yield refused
        yield CounterMetricFamily(
            "trivmc_connections", "Connections accepted.", value=s.connections
        )
        yield CounterMetricFamily(
            "trivmc_pending_links_refused",
            "Connections refused at once: their address had too many still linking.",
            value=s.pending.refused,
        )
        yield CounterMetricFamily(
            "trivmc_pending_links_evicted",
            "Connections still linking dropped to make room for a new one.",
            value=s.pending.evicted,
        )
        yield GaugeMetricFamily(
            "trivmc_pending_links", "Connections accepted and not linked yet.", s.pending_links
        )
        yield CounterMetricFamily(
            "trivmc_tls_handshake_failures",
            "TLS handshakes that failed or did not finish in time.",
            value=s.tls_failures,
        )
        yield GaugeMetricFamily(
            "trivmc_sessions", "Live sessions (linked main channels).", len(s.sessions)
        )
        yield CounterMetricFamily(
            "trivmc_sessions_created", "Sessions created.", value=s.sessions.created
        )
        moved_out = CounterMetricFamily(
            "trivmc_migrations_out",
            "Sessions moved to another server, by how (failed and none: SWITCH_HOST).",
            labels=["outcome"],
        )
        moved_in = CounterMetricFamily(
            "trivmc_migrations_in", "Sessions moved here from another server.", labels=["path"]
        )
        for outcome in MigrationOutcome:
            moved_out.add_metric([outcome.value], s.migrations_out[outcome])
        for outcome in (MigrationOutcome.SEAMLESS, MigrationOutcome.SEMI_SEAMLESS):
            moved_in.add_metric([outcome.value], s.migrations_in[outcome])
        yield moved_out
        yield moved_in

    def _channel_metrics(self) -> Iterator[Metric]:
        s = self.server

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=CHANNEL_LABELS)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=CHANNEL_LABELS)

        wire = {
            "bytes_in": counter(
                "trivmc_channel_received_bytes",
                "SPICE bytes received from clients (headers included).",
            ),
            "bytes_out": counter(
                "trivmc_channel_sent_bytes", "SPICE bytes sent to clients (headers included)."
            ),
            "messages_in": counter(
                "trivmc_channel_received_messages", "Messages received from clients."
            ),
            "messages_out": counter(
                "trivmc_channel_sent_messages", "Messages wholly written to clients."
            ),
        }
        queued = gauge("trivmc_channel_queued_bytes", "Bytes queued for clients, not yet sent.")
        main = ChannelType.MAIN, 0, None
        main_traffic = s.main_traffic.with_live(s.main_clients)
        for attr, family in wire.items():
            family.add_metric(_channel_labels(*main), getattr(main_traffic, attr))
        queued.add_metric(_channel_labels(*main), sum(c.queued_bytes for c in s.main_clients))

        stats = {
            "in_data": "Payload bytes of DATA messages from the client.",
            "in_compressed": "LZ4 bytes of COMPRESSED_DATA messages from the client.",
            "in_decompressed": "Bytes the client's COMPRESSED_DATA decompressed to.",
            "out_data": "Device bytes sent to the client as DATA.",
            "out_compressed": "LZ4 bytes of COMPRESSED_DATA sent to the client.",
            "out_uncompressed": "Device bytes sent to the client as COMPRESSED_DATA.",
        }
        vmc = {key: counter(f"trivmc_vmc_{key}_bytes", doc) for key, doc in stats.items()}
        written = counter("trivmc_device_written_bytes", "Bytes written into the device.")
        read = counter("trivmc_device_read_bytes", "Bytes read from the device for clients.")
        device_dropped = counter(
            "trivmc_device_dropped_bytes",
            "Client bytes the device dropped unwritten (session boundaries, stops).",
        )
        migrated_out = counter(
            "trivmc_device_migrated_out_bytes",
            "Client bytes handed unwritten to a migration target (MIGRATE_DATA sent).",
        )
        migrated_in = counter(
            "trivmc_device_migrated_in_bytes",
            "Bytes a migration source handed over, queued for the device.",
        )
        dropped = counter(
            "trivmc_vmc_dropped_bytes",
            "A departed client's bytes not delivered by the drain deadline, dropped at"
            " its session boundary.",
        )
        buffered = gauge(
            "trivmc_device_buffered_bytes", "Client bytes accepted, not yet written to the device."
        )
        tokens = gauge("trivmc_device_tokens_in_use", "Device write tokens taken (of 128).")
        clients = gauge("trivmc_channel_clients", "Clients linked to the channel (0 or 1).")
        offered = gauge("trivmc_channel_offered", "1 while the channel is offered to clients.")
        served = counter("trivmc_channel_clients_served", "Clients the channel served.")
        busy = counter(
            "trivmc_channel_clients_refused", "Clients closed because another had the channel."
        )
        for ch in list(s.channels.values()):
            labels = _channel_labels(ch.channel_type, ch.channel_id, ch.chardev.port_name)
            traffic = ch.traffic_now
            for attr, family in wire.items():
                family.add_metric(labels, getattr(traffic, attr))
            client = ch.client
            queued.add_metric(labels, 0 if client is None else client.queued_bytes)
            device = ch.device
            for key, family in vmc.items():
                family.add_metric(labels, getattr(device.stats, key))
            written.add_metric(labels, device.stats.written)
            read.add_metric(labels, device.stats.read)
            device_dropped.add_metric(labels, device.stats.dropped)
            migrated_out.add_metric(labels, device.stats.migrated_out)
            migrated_in.add_metric(labels, device.stats.migrated_in)
            dropped.add_metric(labels, ch.bytes_dropped)
            buffered.add_metric(labels, device.buffered_bytes)
            tokens.add_metric(labels, device.total_tokens - device.tokens_free)
            clients.add_metric(labels, 0 if client is None else 1)
            offered.add_metric(labels, 1 if ch.available else 0)
            served.add_metric(labels, ch.clients_served)
            busy.add_metric(labels, ch.clients_refused)
        yield from wire.values()
        yield queued
        yield from vmc.values()
        yield from (written, read, device_dropped, migrated_out, migrated_in)
        yield from (dropped, buffered, tokens)
        yield from (clients, offered, served, busy)


def metrics_registry(server: Server) -> CollectorRegistry:
    """A registry of its own holding only `server`'s collector (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


def _response(status: str, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else body)


def respond(request_head: bytes, registry: CollectorRegistry) -> bytes:
    """The whole HTTP response to one request head: the metrics for GET or HEAD of
    /metrics (a query string is ignored), 404 for another path, 405 for another
    method, 400 for what is not an HTTP request line, 500 (logged with its traceback)
    when collecting fails: a scrape never ends anything but its own connection."""
    line = request_head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    plain = "text/plain; charset=utf-8"
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n", plain)
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET or HEAD only\n", plain)
    if target != "/metrics":
        return _response("404 Not Found", b"metrics are at /metrics\n", plain)
    try:
        body = generate_latest(registry)
    except Exception as e:
        log.error("metrics: collecting failed", exc_info=e)
        return _response("500 Internal Server Error", b"collecting failed\n", plain)
    return _response("200 OK", body, CONTENT_TYPE_LATEST, method == "HEAD")


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head (up to the blank line), or None when the peer closed or sent
    more than MAX_REQUEST bytes without one."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_REQUEST:
            return None
        data = await stream.receive_some(MAX_REQUEST)
        if not data:
            return None
        head += data
    return head


async def _serve_scrape(
    sock: trio.socket.SocketType, registry: CollectorRegistry, slots: trio.Semaphore
) -> None:
    """One HTTP connection: one request, one response, then close. A peer that does
    not send its request within REQUEST_TIMEOUT, or fails, is dropped (logged at debug
    level)."""
    stream: trio.SocketStream | None = None
    try:
        stream = trio.SocketStream(sock)
        with trio.move_on_after(REQUEST_TIMEOUT):
            head = await _read_head(stream)
            if head is not None:
                await stream.send_all(respond(head, registry))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        log.debug("metrics: a scrape failed: %s", e)
    finally:
        slots.release()
        if stream is None:
            sock.close()
        else:
            await close_quietly(stream)


async def serve_metrics(
    server: Server,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `server`'s metrics at http://HOST:PORT/metrics until cancelled; every
    connection it accepted is closed when it returns. The start value lists the bound
    (host, port) addresses; an address it cannot listen on raises `OSError` naming it
    before that."""
    registry = metrics_registry(server)
    listeners = await listen_tcp(host, port)
    addresses: list[tuple[str, int]] = [lst.socket.getsockname()[:2] for lst in listeners]
    slots = trio.Semaphore(MAX_SCRAPES)
    try:
        async with trio.open_nursery() as nursery:

            def accepted(sock: trio.socket.SocketType, addr: object) -> None:
                try:
                    slots.acquire_nowait()
                except trio.WouldBlock:
                    sock.close()
                    return
                nursery.start_soon(_serve_scrape, sock, registry, slots)

            for lst, addr in zip(listeners, addresses, strict=True):
                name = f"metrics {format_address(addr)}"
                nursery.start_soon(accept_loop, lst.socket, accepted, name)
                log.debug("metrics on http://%s/metrics", format_address(addr))
            task_status.started(addresses)
    finally:
        for lst in listeners:
            with contextlib.suppress(OSError):
                lst.socket.close()
