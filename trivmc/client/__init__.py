"""trio SPICE client for usbredir, port and webdav channels of any SPICE server.

Modules: `address` (URIs), `connection` (transport, link, framed messages), `stream`
(`ChannelStream`, a linked VMC channel as a trio stream), `session` (`Session`,
`connect`), `errors` (what the client raises). Each imports only those before it.
"""

from .address import Address, parse_uri
from .errors import ChannelNotFound, MainChannelClosed, SpiceLinkError
from .session import Session, connect
from .stream import ChannelStream

__all__ = [
    "Address",
    "ChannelNotFound",
    "ChannelStream",
    "MainChannelClosed",
    "Session",
    "SpiceLinkError",
    "connect",
    "parse_uri",
]
