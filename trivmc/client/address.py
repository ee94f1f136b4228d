"""Where a SPICE server listens: `Address` and `parse_uri` (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Address:
    """Where a SPICE server listens: a plain TCP port and/or a TLS port on `host`, or a
    unix socket path. `websocket` carries SPICE in WebSocket messages (`ws://`,
    `wss://`), at `target` on the server."""

    host: str | None = None
    port: int | None = None
    path: str | None = None
    tls_port: int | None = None
    websocket: bool = False
    target: str = "/"
    #: a migration destination's certificate subject (MIGRATE_BEGIN): when set, TLS
    #: verifies it instead of the host name, as spice-gtk's cert-subject does
    cert_subject: str | None = None

    @property
    def is_unix(self) -> bool:
        """True for a unix socket address (`path` set), False for TCP."""
        return self.path is not None


def _query_port(query: dict[str, list[str]], name: str, uri: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    if not values[0].isdigit() or not 0 < int(values[0]) < 65536:
        raise ValueError(f"bad {name} in {uri!r}")
    return int(values[0])


def parse_uri(uri: str, tls_port: int | None = None) -> Address:
    """spice://HOST:PORT, spice://HOST?port=PORT&tls-port=TLSPORT (spice-gtk's form),
    spice+tls://HOST:TLSPORT, spice+unix:///PATH, ws://HOST:PORT[/PATH] or
    wss://HOST:PORT[/PATH]. `tls_port` adds a TLS port to a spice:// URI. Raises
    ValueError for anything else."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "spice+unix":
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"no socket path in {uri!r}")
        return Address(path=path)
    host = parts.hostname or "127.0.0.1"
    if scheme in ("ws", "wss"):
        if parts.port is None:
            raise ValueError(f"no port in {uri!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if scheme == "wss":
            return Address(host=host, tls_port=parts.port, websocket=True, target=target)
        return Address(host=host, port=parts.port, websocket=True, target=target)
    if scheme == "spice+tls":
        if parts.port is None:
            raise ValueError(f"no port in {uri!r}")
        return Address(host=host, tls_port=parts.port)
    if scheme != "spice":
        raise ValueError(f"not a spice:// URI: {uri!r}")
    query = parse_qs(parts.query)
    port = parts.port or _query_port(query, "port", uri)
    tls_port = tls_port or _query_port(query, "tls-port", uri)
    if port is None and tls_port is None:
        raise ValueError(f"no port in {uri!r}")
    return Address(host=host, port=port, tls_port=tls_port)
