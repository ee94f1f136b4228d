"""A migration over TLS whose destination's certificate does not name its host: the
source's MIGRATE_BEGIN carries the certificate subject to check instead (QEMU's
`client_migrate_info ... cert-subject=`), as spice-gtk checks it. Two trivmc servers,
TLS only, certificates from `trustme`: trivmc's client follows the move when the
subject matches, in any order of its attributes, and refuses the destination when it
does not, or when no subject is given (the host name does not match)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from trivmc.backends import EchoBackend
from trivmc.client import connect
from trivmc.protocol import MigrationDstInfo
from trivmc.server import MigrationOutcome, Server, ServerConfig
from trivmc.transport import server_tls_context

PORT = "org.trivmc.tlsmig.0"


def tls_server(ca: trustme.CA, cert: trustme.LeafCert, tmp_path: Path, name: str) -> Server:
    paths = {part: tmp_path / f"{name}-{part}.pem" for part in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    config = ServerConfig(
        tls_listen=[("127.0.0.1", 0)],
        tls=server_tls_context(str(paths["cert"]), str(paths["key"]), str(paths["ca"])),
        key_pool_size=2,
        key_process=False,
    )
    server = Server(config)
    server.add_port(PORT, EchoBackend())
    return server


@pytest.mark.parametrize(
    ("subject", "moves"),
    [
        ("O=trivmc tests, OU=migration, CN=trivmc destination", True),  # another order
        ("O=trivmc tests,OU=migration,CN=someone else", False),
        ("O=trivmc tests, CN=trivmc destination", False),  # an attribute missing
        ("", False),  # no subject: the host name is checked, and the cert does not name it
    ],
)
async def test_the_destination_is_checked_by_its_certificate_subject(
    tmp_path: Path, subject: str, moves: bool
) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "trust.pem"))
    a = tls_server(ca, ca.issue_cert("127.0.0.1"), tmp_path, "a")
    dst_cert = ca.issue_cert(
        "destination.invalid",
        common_name="trivmc destination",
        organization_name="trivmc tests",
        organization_unit_name="migration",
    )
    b = tls_server(ca, dst_cert, tmp_path, "b")
    async with a, b:
        (a_port,) = [addr[1] for addr in a.tls_addresses if isinstance(addr, tuple)]
        (b_port,) = [addr[1] for addr in b.tls_addresses if isinstance(addr, tuple)]
        uri = f"spice+tls://127.0.0.1:{a_port}"
        async with connect(uri, ca_file=str(tmp_path / "trust.pem")) as session:
            ch = await session.open_port(PORT)
            b.expect_migration(session.session_id)
            dst = MigrationDstInfo(0, b_port, b"127.0.0.1", subject.encode())
            outcomes = await a.migrate_sessions(dst, connect_timeout=10, leave_timeout=None)
            if moves:
                assert outcomes == {session.session_id: MigrationOutcome.SEAMLESS}
                with trio.fail_after(10):
                    await session.wait_migrated(after=0)
                assert len(b.sessions) == 1
                await ch.send_all(b"through the destination")
                with trio.fail_after(10):
                    assert await ch.receive_some() == b"through the destination"
            else:
                assert outcomes == {session.session_id: MigrationOutcome.FAILED}
                assert session.migrations == 0 and len(b.sessions) == 0
