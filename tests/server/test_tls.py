"""TLS channels: the TLS listener, the per-channel security policy, and bad handshakes.

trivmc's own client on loopback; certificates from `trustme` (nothing secret on disk
beyond the test's temporary folder).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from trivmc.backends import EchoBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.protocol import ChannelType, LinkError
from trivmc.server import Server, ServerConfig
from trivmc.transport import server_tls_context

from .test_bad_input import ECHO, settle, still_serves

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """CA file, server certificate (for 127.0.0.1) and key, and another CA's file."""
    d = tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: d / f"{name}.pem" for name in ("ca", "cert", "key", "other")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other"]))
    return {k: str(v) for k, v in paths.items()}


@asynccontextmanager
async def tls_serving(pki: dict[str, str], **kw: object) -> AsyncIterator[tuple[Server, int, int]]:
    """A server with a plain and a TLS listener; yields (server, plain port, TLS port)."""
    cfg = ServerConfig(
        listen=[("127.0.0.1", 0)],
        tls_listen=[("127.0.0.1", 0)],
        tls=server_tls_context(pki["cert"], pki["key"], pki["ca"]),
        key_pool_size=2,
        **kw,  # type: ignore[arg-type]
    )
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        plain = addrs[0][1]  # type: ignore[index]
        tls = server.tls_addresses[0][1]  # type: ignore[index]
        yield server, plain, tls


async def echo(ch: object, payload: bytes) -> bytes:
    got = bytearray()

    async def reader() -> None:
        while len(got) < len(payload):
            data = await ch.receive_some(1 << 20)  # type: ignore[attr-defined]
            assert data
            got.extend(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await ch.send_all(payload)  # type: ignore[attr-defined]
    return bytes(got)


def is_tls(ch: object) -> bool:
    return isinstance(ch.conn.stream, trio.SSLStream)  # type: ignore[attr-defined]


async def test_port_echo_over_tls_only(pki: dict[str, str]) -> None:
    async with tls_serving(pki) as (server, _, tls):
        async with connect(f"spice+tls://127.0.0.1:{tls}", ca_file=pki["ca"]) as session:
            assert isinstance(session.main.stream, trio.SSLStream)  # type: ignore[union-attr]
            ch = await session.open_port(ECHO)
            assert is_tls(ch)
            assert await echo(ch, PAYLOAD) == PAYLOAD
        device = server.channels[(ChannelType.PORT, 0)].device
        await settle(lambda: device.idle and device.client is None)
        assert device.tokens_free == 128 and device.outstanding_buffers == 0


async def test_default_policy_allows_either_port(pki: dict[str, str]) -> None:
    async with tls_serving(pki) as (server, plain, tls):
        uri = f"spice://127.0.0.1?port={plain}&tls-port={tls}"
        async with connect(uri, ca_file=pki["ca"]) as session:
            ch = await session.open_port(ECHO)
            assert not is_tls(ch)  # the plain port is tried first and allowed
            assert await echo(ch, b"plain is fine") == b"plain is fine"
        assert server.links_refused == 0


async def test_secure_port_relinks_on_tls(
    pki: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with tls_serving(pki, secure_channels=frozenset({ChannelType.PORT})) as (
        server,
        plain,
        tls,
    ):
        uri = f"spice://127.0.0.1?port={plain}&tls-port={tls}"
        async with connect(uri, ca_file=pki["ca"]) as session:
            assert not isinstance(session.main.stream, trio.SSLStream)  # type: ignore[union-attr]
            ch = await session.open_port(ECHO)
            assert is_tls(ch)
            assert await echo(ch, PAYLOAD) == PAYLOAD
        assert server.links_refused == 1
        assert "NEED_SECURED" in caplog.text
        # a client that knows no TLS port is told why
        with pytest.raises(SpiceLinkError) as e:
            async with connect(f"spice://127.0.0.1:{plain}") as session:
                await session.open_port(ECHO)
        assert e.value.code == LinkError.NEED_SECURED


async def test_secure_main_refused_on_plain(pki: dict[str, str]) -> None:
    async with tls_serving(pki, secure_channels=frozenset({ChannelType.MAIN})) as (_, plain, tls):
        with pytest.raises(SpiceLinkError) as e:
            async with connect(f"spice://127.0.0.1:{plain}"):
                pass
        assert e.value.code == LinkError.NEED_SECURED
        async with connect(f"spice://127.0.0.1:{plain}", tls_port=tls, ca_file=pki["ca"]) as s:
            assert isinstance(s.main.stream, trio.SSLStream)  # type: ignore[union-attr]
            ch = await s.open_port(ECHO)
            assert not is_tls(ch)


async def test_plaintext_channel_refused_on_tls(pki: dict[str, str]) -> None:
    async with tls_serving(pki, plaintext_channels=frozenset({ChannelType.PORT})) as (
        server,
        plain,
        tls,
    ):
        with pytest.raises(SpiceLinkError) as e:
            async with connect(f"spice+tls://127.0.0.1:{tls}", ca_file=pki["ca"]) as session:
                await session.open_port(ECHO)
        assert e.value.code == LinkError.NEED_UNSECURED
        # knowing the plain port, the client links the port there
        uri = f"spice://127.0.0.1?port={plain}&tls-port={tls}"
        async with connect(uri, ca_file=pki["ca"]) as session:
            ch = await session.open_port(ECHO)
            assert not is_tls(ch)
        assert server.links_refused == 1


async def test_wrong_ca_is_refused_and_others_served(
    pki: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with tls_serving(pki) as (server, plain, tls):
        with pytest.raises(trio.BrokenResourceError) as e:
            async with connect(f"spice+tls://127.0.0.1:{tls}", ca_file=pki["other"]):
                pass
        assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
        await settle(lambda: server.tls_failures == 1)
        assert "TLS handshake failed" in caplog.text
        await still_serves(f"spice://127.0.0.1:{plain}", server)


@pytest.mark.parametrize("what", ["silence", "plain-spice", "garbage"])
async def test_bad_or_stalled_handshake(
    pki: dict[str, str], caplog: pytest.LogCaptureFixture, what: str
) -> None:
    """A TLS port peer that stalls or speaks something else is dropped within the
    handshake bound, and a TLS client at the same time is served."""
    caplog.set_level(logging.INFO)
    async with tls_serving(pki, tls_handshake_timeout=0.3) as (server, _, tls):
        async with await trio.open_tcp_stream("127.0.0.1", tls) as bad:
            if what == "plain-spice":
                await bad.send_all(b"REDQ" + bytes(12))
            elif what == "garbage":
                await bad.send_all(bytes(range(256)) * 4)
            async with connect(f"spice+tls://127.0.0.1:{tls}", ca_file=pki["ca"]) as s:
                ch = await s.open_port(ECHO)
                assert await echo(ch, b"meanwhile") == b"meanwhile"
            with trio.fail_after(10):
                while await bad.receive_some(4096):
                    pass  # the server answers with a TLS alert at most, then closes
        assert server.tls_failures == 1
        expect = "not finished" if what == "silence" else "TLS handshake failed"
        assert expect in caplog.text


def test_server_context_rejects_missing_files(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        server_tls_context(str(tmp_path / "nope.pem"))


def test_config_refuses_contradictions() -> None:
    with pytest.raises(ValueError, match="both secure and plaintext"):
        ServerConfig(
            secure_channels=frozenset({ChannelType.PORT}),
            plaintext_channels=frozenset({ChannelType.PORT}),
        )
    with pytest.raises(ValueError, match="TLS context"):
        ServerConfig(tls_listen=[("127.0.0.1", 0)])
