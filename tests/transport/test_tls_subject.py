"""`subject_matches`: a certificate's subject against the text spice-server sends in
MIGRATE_BEGIN (comma separated, spaces allowed after a comma, `\\,` for a comma)."""

from __future__ import annotations

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trivmc.transport.tls import subject_matches


@pytest.fixture(scope="module")
def der() -> bytes:
    cert = trustme.CA().issue_cert(
        "host.invalid",
        common_name="Doe, Jane",
        organization_name="Red Hat",
        organization_unit_name="VMs",
    )
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("subject", "matches"),
    [
        ("O=Red Hat, OU=VMs, CN=Doe\\, Jane", True),
        ("CN=Doe\\, Jane,OU=VMs,O=Red Hat", True),  # any order, no spaces
        ("  O=Red Hat,  OU=VMs,   CN=Doe\\, Jane ", True),
        ("O=Red Hat, OU=VMs, CN=Doe, Jane", False),  # the comma unescaped: "Jane" is no attribute
        ("O=Red Hat, OU=VMs", False),  # CN missing
        ("O=Red Hat, OU=VMs, CN=Doe\\, Jane, C=IL", False),  # one too many
        ("O=Red Hat, OU=vms, CN=Doe\\, Jane", False),  # values are compared exactly
        ("", False),
    ],
)
def test_subject_matches(der: bytes, subject: str, matches: bool) -> None:
    assert subject_matches(der, subject) is matches
