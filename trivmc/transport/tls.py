"""TLS contexts for SPICE's secure channels (stdlib `ssl`, TLS 1.2 or newer)."""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cryptography.x509 import NameAttribute


def server_tls_context(cert: str, key: str | None = None, ca: str | None = None) -> ssl.SSLContext:
    """A server context serving `cert` (PEM, with its chain) and `key`.

    As spice-server does with its x509 CA file, `ca` is loaded to complete the chain the
    server presents; client certificates are not requested.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.load_verify_locations(ca)
    return ctx


def client_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server certificate and its host name, against
    `ca_file` when given, else the system's trust store."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def subject_matches(der_cert: bytes, expected: str) -> bool:
    """Whether the certificate `der_cert` (DER) has the subject `expected`, written as
    spice-server sends a migration destination's (`client_migrate_info`'s
    cert-subject): "C=IL, L=Raanana, O=Red Hat, CN=my server", `\\,` escaping a comma.
    The attributes must be the same, in any order (spice-gtk compares the whole name).
    False for a subject that cannot be parsed."""
    from cryptography import x509  # (loaded only when a subject is checked)
    from cryptography.x509.oid import NameOID

    text = re.sub(r"(?<!\\),\s+", ",", expected.strip())
    try:
        want = x509.Name.from_rfc4514_string(
            text, {"emailAddress": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS}
        )
    except ValueError:
        return False
    have = x509.load_der_x509_certificate(der_cert).subject
    return sorted(_pairs(want)) == sorted(_pairs(have))


def _pairs(name: Iterable[NameAttribute[str | bytes]]) -> list[tuple[str, str]]:
    return [(attr.oid.dotted_string, str(attr.value)) for attr in name]
