"""trivmc's client against trivmc's own server, in process, on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import trio

from trivmc.backends import EchoBackend, SourceBackend, pattern
from trivmc.client import SpiceLinkError, connect
from trivmc.protocol import LinkError
from trivmc.server import Server, ServerConfig

ECHO = "org.trivmc.echo.0"


def make_server(**kw: object) -> Server:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, **kw))  # type: ignore[arg-type]
    server.add_port(ECHO, EchoBackend())
    server.add_port("org.trivmc.source.0", SourceBackend(3 * 1024 * 1024 + 17))
    server.add_usbredir(EchoBackend())
    return server


async def echo_through(port: object, payload: bytes) -> bytes:
    received = bytearray()

    async def reader() -> None:
        while len(received) < len(payload):
            data = await port.receive_some(1 << 20)  # type: ignore[attr-defined]
            assert data, "channel closed early"
            received.extend(data)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await port.send_all(payload)  # type: ignore[attr-defined]
    return bytes(received)


@pytest.mark.parametrize("lz4", [True, False])
async def test_8mib_echo_through_port(lz4: bool) -> None:
    payload = (b"compressible text " * 300 + os.urandom(500)) * 1500  # ~8.8 MB, half-compressible
    payload = payload[: 8 * 1024 * 1024]
    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}", lz4=lz4) as session:
            ch = await session.open_port(ECHO)
            assert ch.opened is True and ch.port_name == ECHO
            got = await echo_through(ch, payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        stats = server.channels[(10, 0)].device.stats
        # spice-server's meanings: DATA payload, LZ4 block and its output, both ways
        assert stats.in_data + stats.in_decompressed == len(payload) == stats.written
        assert stats.out_data + stats.out_uncompressed == len(payload) == stats.read
        if lz4:
            assert 0 < stats.in_compressed < stats.in_decompressed
            assert 0 < stats.out_compressed < stats.out_uncompressed
        else:
            assert stats.in_compressed == stats.in_decompressed == 0 == stats.out_compressed
            assert stats.out_uncompressed == 0 and stats.in_data == len(payload)


async def test_usbredir_echo_with_lz4() -> None:
    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}") as session:
            assert (9, 0) in session.channels
            ch = await session.open_usbredir(0)
            got = await echo_through(ch, b"x" * 100_000)
            assert got == b"x" * 100_000
        assert server.channels[(9, 0)].device.stats.in_compressed > 0


async def test_source_read_to_the_end() -> None:
    server = make_server()
    total = 3 * 1024 * 1024 + 17
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}") as session:
            ch = await session.open_port("org.trivmc.source.0")
            got = bytearray()
            while len(got) < total:
                data = await ch.receive_some()
                assert data
                got += data
            assert bytes(got) == pattern(0, total)


async def test_second_client_on_channel_refused() -> None:
    server = make_server(multi_session=True)
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        uri = f"spice://{host}:{port}"
        async with connect(uri) as s1, connect(uri) as s2:
            first = await s1.open_port(ECHO)
            second = await s2.open_channel(10, 0)
            assert await second.receive_some() == b""  # linked, then closed by the server
            assert await echo_through(first, b"still here") == b"still here"
        assert server.channels[(10, 0)].clients_refused == 1


async def test_wrong_password_raises_link_error() -> None:
    server = make_server(password="pw")
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        with pytest.raises(SpiceLinkError) as info:
            async with connect(f"spice://{host}:{port}", password="nope"):
                pass
        assert info.value.code == LinkError.PERMISSION_DENIED
        async with connect(f"spice://{host}:{port}", password="pw") as session:
            assert session.session_id != 0


async def test_lost_connection_ends_pending_receive() -> None:
    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}") as session:
            ch = await session.open_port(ECHO)
            async with trio.open_nursery() as n:

                async def receiver() -> None:
                    with pytest.raises(trio.BrokenResourceError):
                        await ch.receive_some()

                n.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                # a new main link replaces this session: the server closes its channels
                async with connect(f"spice://{host}:{port}"):
                    pass


async def test_port_break_reaches_the_backend() -> None:
    server = make_server()
    backend = server.channels[(10, 0)].backend
    assert isinstance(backend, EchoBackend)
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        async with connect(f"spice://{host}:{port}") as session:
            ch = await session.open_port(ECHO)
            await ch.send_break()
            await ch.send_all(b"sync")  # ordered after the BREAK on the same connection
            with trio.fail_after(10):
                assert await ch.receive_some() == b"sync"
    assert backend.breaks == 1


async def test_trivmc_connect_listen_exposes_the_channel() -> None:
    import sys

    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        cmd = [sys.executable, "-m", "trivmc", "connect", f"spice://{host}:{port}"]
        cmd += ["--port", ECHO, "--listen", f"127.0.0.1:{local}"]
        proc = await trio.lowlevel.open_process(cmd, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            with trio.fail_after(30):
                banner = b""
                while b"listening on" not in banner:
                    banner += await proc.stderr.receive_some()
            for round_ in range(2):  # one connection at a time, a fresh channel each
                async with await trio.open_tcp_stream("127.0.0.1", local) as conn:
                    await conn.send_all(b"round %d" % round_)
                    with trio.fail_after(10):
                        got = b""
                        while len(got) < 7:
                            got += await conn.receive_some()
                    assert got == b"round %d" % round_
        finally:
            proc.kill()
            await proc.wait()
    assert server.channels[(10, 0)].clients_served >= 2


@pytest.mark.parametrize("which", [["--usbredir", "0"], ["--webdav"]])
async def test_trivmc_connect_stdio_usbredir_and_webdav(which: list[str]) -> None:
    import sys

    server = make_server()
    server.add_webdav(EchoBackend())
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        payload = os.urandom(200_000)
        cmd = [sys.executable, "-m", "trivmc", "connect", f"spice://{host}:{port}", *which]
        with trio.fail_after(60):
            proc = await trio.run_process(
                [*cmd, "--linger", "3"], stdin=payload, capture_stdout=True, check=False
            )
    assert proc.returncode == 0
    assert proc.stdout == payload  # binary safe, in order, through the echo device


async def test_trivmc_connect_exits_after_stdin_ends_late() -> None:
    """stdin ends only after every echoed byte came back: it must still exit (linger)."""
    import sys

    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        cmd = [sys.executable, "-m", "trivmc", "connect", f"spice://{host}:{port}"]
        cmd += ["--port", ECHO, "--linger", "0.5"]
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            await proc.stdin.send_all(b"all of it")
            got = b""
            with trio.fail_after(30):
                while len(got) < 9:
                    got += await proc.stdout.receive_some()
            assert got == b"all of it"
            await proc.stdin.aclose()  # stdin ends after the data is all back
            with trio.fail_after(30):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_trivmc_connect_over_tls_follows_need_secured(tmp_path: Path) -> None:
    """`trivmc connect spice://H?port=P&tls-port=T --ca-file CA`: the server wants the
    port secure, the command relinks it on TLS; with another CA it fails with exit 1."""
    import sys

    import trustme

    from trivmc.protocol import ChannelType
    from trivmc.transport import server_tls_context

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    pem, ca_pem, other = tmp_path / "s.pem", tmp_path / "ca.pem", tmp_path / "o.pem"
    pem.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_pem))
    trustme.CA().cert_pem.write_to_path(str(other))
    server = make_server(
        tls_listen=[("127.0.0.1", 0)],
        tls=server_tls_context(str(pem)),
        secure_channels=frozenset({ChannelType.PORT}),
    )
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        tls_port = server.tls_addresses[0][1]  # type: ignore[index]
        uri = f"spice://{host}?port={port}&tls-port={tls_port}"
        cmd = [sys.executable, "-m", "trivmc", "connect", uri, "--port", ECHO, "--linger", "3"]
        payload = os.urandom(300_000)
        with trio.fail_after(60):
            ok = await trio.run_process(
                [*cmd, "--ca-file", str(ca_pem)], stdin=payload, capture_stdout=True, check=False
            )
            bad = await trio.run_process(
                [*cmd, "--ca-file", str(other)],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert ok.returncode == 0 and ok.stdout == payload
    assert server.links_refused >= 1  # NEED_SECURED on the plain port, then TLS
    assert bad.returncode == 1 and b"CERTIFICATE_VERIFY_FAILED" in bad.stderr, bad.stderr


async def test_trivmc_connect_over_websocket() -> None:
    import sys

    server = make_server()
    async with server as addrs:
        host, port = addrs[0]  # type: ignore[misc]
        cmd = [sys.executable, "-m", "trivmc", "connect", f"ws://{host}:{port}", "--port", ECHO]
        payload = os.urandom(200_000)
        with trio.fail_after(60):
            proc = await trio.run_process(
                [*cmd, "--linger", "3"], stdin=payload, capture_stdout=True, check=False
            )
    assert proc.returncode == 0 and proc.stdout == payload
