"""spice-gtk (the real client) against `trivmc serve` with TLS channels.

The behaviour matched is QEMU 7.2's spice-server with `tls-port`, `x509-dir` and
`tls-channel=...`: spice-gtk given `tls-port` and `ca-file` links over TLS; pointed at
the plain port for a channel that must be secure, it follows NEED_SECURED onto the TLS
port; with another CA its main channel reports `error-tls`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from .tools import run_gtk, trivmc_serve

ECHO = "org.trivmc.echo.0"
FOUR_MIB = 4 * 1024 * 1024
REMOTE_VIEWER_URI = r"try: remote-viewer (spice://\S+)"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")  # subjectAltName IP:127.0.0.1, as spice-gtk checks
    files = {name: str(d / f"{name}.pem") for name in ("ca", "cert", "key", "other")}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    trustme.CA().cert_pem.write_to_path(files["other"])
    return files


def tls_args(pki: dict[str, str], *extra: str) -> list[str]:
    return [
        "--disable-ticketing",
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        pki["cert"],
        "--key",
        pki["key"],
        "--ca",
        pki["ca"],
        "--port",
        f"{ECHO}=echo",
        *extra,
    ]


def tls_only(uri: str) -> str:
    """spice://H?port=P&tls-port=T -> spice://H?tls-port=T (every channel on TLS)."""
    host, _, query = uri.partition("?")
    tls = [q for q in query.split("&") if q.startswith("tls-port=")]
    return f"{host}?{tls[0]}"


def linked_lines(log: list[str]) -> list[str]:
    return [line for line in log if ": linked" in line]


async def test_port_echo_over_tls(pki: dict[str, str]) -> None:
    log: list[str] = []
    async with trivmc_serve(*tls_args(pki), log=log, announce=REMOTE_VIEWER_URI) as uri:
        assert "tls-port=" in uri and "port=" in uri
        tls = await run_gtk("port-echo", tls_only(uri), ECHO, str(FOUR_MIB), ca_file=pki["ca"])
        plain = await run_gtk("port-echo", uri.partition("&")[0], ECHO, str(FOUR_MIB))
    assert tls.get("timeout") is None, tls
    assert tls["port_name"] == ECHO
    assert tls["recv_sha256"] == tls["sent_sha256"]
    assert plain["recv_sha256"] == plain["sent_sha256"]
    linked = linked_lines(log)
    assert any(" tls main (session " in line for line in linked), log
    assert any(" tls port:0 (org.trivmc.echo.0): linked" in line for line in linked), log
    mbps_tls = 2 * FOUR_MIB / tls["seconds"] / 1e6
    mbps_plain = 2 * FOUR_MIB / plain["seconds"] / 1e6
    print(f"spice-gtk echo 4 MiB: TLS {mbps_tls:.1f} MB/s, plain {mbps_plain:.1f} MB/s")


async def test_secure_port_followed_onto_tls(pki: dict[str, str]) -> None:
    """`--secure-channels port`, client pointed at the plain port (and told the TLS
    port): the port link is refused with NEED_SECURED and spice-gtk relinks on TLS."""
    log: list[str] = []
    args = tls_args(pki, "--secure-channels", "port")
    async with trivmc_serve(*args, log=log, announce=REMOTE_VIEWER_URI) as uri:
        r = await run_gtk("port-echo", uri, ECHO, str(256 * 1024), ca_file=pki["ca"])
    assert r.get("timeout") is None, r
    assert r["recv_sha256"] == r["sent_sha256"]
    assert any("NEED_SECURED" in line for line in log), log
    linked = linked_lines(log)
    main = [line for line in linked if " main (session " in line]
    port = [line for line in linked if "port:0 (org.trivmc.echo.0): linked" in line]
    assert main and " tls " not in main[0], log  # main may stay plain
    assert port and " tls " in port[-1], log  # the port ended up on TLS


async def test_wrong_ca_gives_error_tls(pki: dict[str, str], tmp_path: Path) -> None:
    log: list[str] = []
    async with trivmc_serve(*tls_args(pki), log=log, announce=REMOTE_VIEWER_URI) as uri:
        bad = await run_gtk("auth", tls_only(uri), ca_file=pki["other"])
        good = await run_gtk("auth", tls_only(uri), ca_file=pki["ca"])
    assert bad["outcome"] == "error-tls", bad
    assert good["outcome"] == "opened", good
    assert any("TLS handshake failed" in line for line in log), log
