"""Prometheus metrics: scraped over loopback from a server with a live session, values
checked against what the client did, the text checked by promtool; the collector
follows the live server (gauges, drops, removed channels)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.interop.tools import missing
from trivmc.backends import EchoBackend, SourceBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.client.session import link_channel, parse_uri
from trivmc.protocol import MINI_HEADER_SIZE, ChannelType, PortInit
from trivmc.server import Server, ServerConfig, metrics
from trivmc.server.metrics import metrics_registry, serve_metrics
from trivmc.transport import server_tls_context

from .test_bad_input import ECHO, StallingBackend, settle

SOURCE = "org.trivmc.source.0"
CHUNK = 64 * 1024  # trivmc's client sends DATA of at most this
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def metrics_endpoint(server: Server) -> AsyncIterator[tuple[str, int]]:
    """The server's metrics served on a free loopback port while the block runs."""
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(serve_metrics, server, "127.0.0.1", 0)
        yield address
        nursery.cancel_scope.cancel()


async def http(address: tuple[str, int], request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send one raw request; return the status line, the headers and the body."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(10):
            while data := await stream.receive_some():
                response += data
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert int(headers["content-length"]) == len(body) or request.startswith(b"HEAD")
    return status, headers, body


def parse(body: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def channel(kind: str, cid: int = 0, name: str = "") -> frozenset[tuple[str, str]]:
    return frozenset({"type": kind, "id": str(cid), "name": name}.items())


def require_promtool() -> str:
    """promtool (Debian's prometheus package): a skip without it, a failure when
    TRIVMC_REQUIRE_INTEROP is set."""
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool (Debian package prometheus)")
        raise AssertionError("unreachable: missing() skips or fails")
    return promtool


def promtool_check(promtool: str, body: bytes) -> None:
    """`promtool check metrics` finds nothing to say about `body`."""
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout and not r.stderr, (r.stdout, r.stderr)


async def fail_a_tls_handshake(address: tuple[str, int]) -> None:
    """Plain bytes to the TLS port: the server's handshake fails, and it closes."""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(b"this is not a TLS client hello\r\n" * 4)
        with trio.fail_after(10):
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass  # a reset is a close too


async def test_scrape_during_a_live_session(tmp_path: Path) -> None:
    import trustme

    promtool = require_promtool()
    pem = tmp_path / "server.pem"
    pem.write_bytes(trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.bytes())
    config = ServerConfig(
        listen=[("127.0.0.1", 0)],
        tls_listen=[("127.0.0.1", 0)],
        tls=server_tls_context(str(pem)),
        password="pw",
        key_pool_size=2,
    )
    server = Server(config)
    server.add_port(ECHO, EchoBackend())
    server.add_usbredir(EchoBackend())
    payload = os.urandom(3 * CHUNK + 100)  # 4 DATA messages (lz4 off)
    async with server as addrs, metrics_endpoint(server) as address:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        try:
            async with connect(uri, password="wrong"):
                raise AssertionError("linked with a wrong password")
        except SpiceLinkError:
            pass
        await fail_a_tls_handshake(server.tls_addresses[0])  # type: ignore[arg-type]
        async with connect(uri, password="pw", lz4=False) as session:
            port = await session.open_port(ECHO)
            await port.send_all(payload)
            got = b""
            with trio.fail_after(30):
                while len(got) < len(payload):
                    got += await port.receive_some()
            assert got == payload
            status, headers, body = await http(address, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and headers["content-type"].startswith("text/plain")
    promtool_check(promtool, body)
    m = parse(body)
    port_labels = channel("port", 0, ECHO)
    received = m[("trivmc_channel_received_bytes_total", port_labels)]
    assert m[("trivmc_vmc_in_data_bytes_total", port_labels)] == len(payload)
    assert received == len(payload) + 4 * MINI_HEADER_SIZE
    assert m[("trivmc_channel_received_messages_total", port_labels)] == 4
    sent_messages = m[("trivmc_channel_sent_messages_total", port_labels)]
    init = PortInit(ECHO.encode(), True).encode()  # then the echo, as DATA
    assert m[("trivmc_channel_sent_bytes_total", port_labels)] == (
        len(init) + len(payload) + sent_messages * MINI_HEADER_SIZE
    )
    for name in ("vmc_out_data", "device_written", "device_read"):
        assert m[(f"trivmc_{name}_bytes_total", port_labels)] == len(payload), name
    for name in ("in_compressed", "in_decompressed", "out_compressed", "out_uncompressed"):
        assert m[(f"trivmc_vmc_{name}_bytes_total", port_labels)] == 0, name
    assert m[("trivmc_vmc_dropped_bytes_total", port_labels)] == 0
    assert m[("trivmc_channel_clients", port_labels)] == 1
    assert m[("trivmc_device_tokens_in_use", port_labels)] == 0  # every byte came back
    assert m[("trivmc_channel_clients", channel("usbredir"))] == 0
    assert m[("trivmc_channel_received_messages_total", channel("main"))] >= 1

    def by(label: str, value: str, name: str) -> float:
        return m[(name, frozenset({(label, value)}))]

    assert by("type", "main", "trivmc_links_accepted_total") == 1  # the wrong one was not
    assert by("type", "port", "trivmc_links_accepted_total") == 1
    assert by("type", "usbredir", "trivmc_links_accepted_total") == 0
    assert by("reason", "PERMISSION_DENIED", "trivmc_links_refused_total") == 1
    assert by("reason", "NEED_SECURED", "trivmc_links_refused_total") == 0
    assert m[("trivmc_tls_handshake_failures_total", frozenset())] == 1
    assert m[("trivmc_sessions", frozenset())] == 1
    assert m[("trivmc_sessions_created_total", frozenset())] == 1
    assert m[("trivmc_connections_total", frozenset())] == 4  # main twice, the TLS one, the port
    assert m[("trivmc_pending_links", frozenset())] == 0


async def test_http_answers_only_get_and_head_of_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.2)
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    server.add_port(ECHO, EchoBackend())
    async with server, metrics_endpoint(server) as address:
        _, _, full = await http(address, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        status, headers, body = await http(address, b"HEAD /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b""
        assert int(headers["content-length"]) == len(full) > 0
        for request, want in (
            (b"GET / HTTP/1.1\r\n\r\n", "404"),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
            (b"hello\r\n\r\n", "400"),
        ):
            status, _, _ = await http(address, request)
            assert status.split()[1] == want, request
        monkeypatch.setattr(metrics.ServerCollector, "collect", lambda self: 1 / 0)
        status, _, _ = await http(address, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status.split()[1] == "500"  # logged; the next scrape is served
        monkeypatch.undo()
        monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.2)
        assert (await http(address, b"GET /metrics HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")
        async with await trio.open_tcp_stream(*address) as silent:
            with trio.fail_after(10):  # a peer that never sends is dropped, in time
                await silent.send_all(b"GET /metrics")
                assert await silent.receive_some() == b""


async def test_the_collector_follows_the_live_server() -> None:
    """Gauges read the live objects; bytes dropped at a session boundary show; a removed
    channel's series are gone from the next scrape."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    stalled = StallingBackend()
    stalled.stalled = True
    stalled.drain = 0.05  # type: ignore[attr-defined]  # the boundary's deadline
    echo = server.add_port(ECHO, stalled)
    source = server.add_port(SOURCE, SourceBackend(16 * 1024 * 1024))
    registry = metrics_registry(server)
    labels = {"type": "port", "id": "0", "name": ECHO}
    source_labels = {"type": "port", "id": "1", "name": SOURCE}

    def get(name: str, which: dict[str, str] = labels) -> float | None:
        return registry.get_sample_value(name, which)

    def assert_balanced() -> None:
        """What came in is written, held or dropped (docs/operating.md)."""
        came = ("vmc_in_data_bytes_total", "vmc_in_decompressed_bytes_total")
        went = (
            "device_written_bytes_total",
            "device_buffered_bytes",
            "device_dropped_bytes_total",
        )
        total = {x: get(f"trivmc_{x}") or 0.0 for x in (*came, *went)}
        assert sum(total[x] for x in came) == sum(total[x] for x in went) > 0, total

    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri) as session:
            port = await session.open_port(ECHO)
            await port.send_all(os.urandom(200_000))  # 4 DATA messages, each a token
            await settle(lambda: echo.device.stats.in_data == 200_000)
            assert get("trivmc_device_tokens_in_use") == 4
            assert get("trivmc_device_buffered_bytes") == 200_000
            assert get("trivmc_channel_clients") == 1
            assert_balanced()
            linked = await link_channel(
                parse_uri(uri), session.session_id, ChannelType.PORT, 1, [], None
            )
            async with linked.stream:  # a client that never reads what the source sends
                await settle(lambda: source.client is not None and source.client.queued_bytes > 0)
                assert source.client is not None
                queued = source.client.queued_bytes
                assert get("trivmc_channel_queued_bytes", source_labels) == queued
                sent_so_far = get("trivmc_channel_sent_bytes_total", source_labels)
                assert sent_so_far is not None and sent_so_far > 0
        await settle(lambda: echo.bytes_dropped > 0 and source.client is None)
        await settle(lambda: echo.device.idle)  # the writer let go of the dropped buffer
        assert get("trivmc_vmc_dropped_bytes_total") == echo.bytes_dropped == 200_000
        assert get("trivmc_device_dropped_bytes_total") == 200_000  # all in its queue
        assert_balanced()
        assert get("trivmc_channel_clients") == 0
        assert get("trivmc_channel_clients_served_total") == 1
        assert get("trivmc_device_tokens_in_use") == get("trivmc_device_buffered_bytes") == 0
        sent = get("trivmc_channel_sent_bytes_total", source_labels)  # ended: still there
        assert sent == source.traffic.bytes_out >= sent_so_far
        assert get("trivmc_channel_queued_bytes", source_labels) == 0
        await server.remove_channel(echo)
        assert get("trivmc_vmc_in_data_bytes_total") is None
        assert get("trivmc_channel_offered", source_labels) == 1
