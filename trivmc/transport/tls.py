"""TLS contexts for SPICE's secure channels (stdlib `ssl`, TLS 1.2 or newer)."""

from __future__ import annotations

import ssl


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
