"""trio SPICE client for usbredir, port and webdav channels of any SPICE server.

Modules: `address` (URIs), `connection` (transport, link, framed messages), `stream`
(`ChannelStream`, a linked VMC channel as a trio stream), `migration` and `moves`
(following a live migration, docs/migration.md), `session` (`Session`, `connect`),
`errors` (what the client raises). Each imports only those before it.
"""

from .address import Address, parse_uri
from .errors import ChannelNotFound, MainChannelClosed, SpiceLinkError
from .migration import MoveKind
from .session import Session, connect
from .stream import ChannelStream

__all__ = [
    "Address",
    "ChannelNotFound",
    "ChannelStream",
    "MainChannelClosed",
    "MoveKind",
    "Session",
    "SpiceLinkError",
    "connect",
    "parse_uri",
]
