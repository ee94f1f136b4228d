"""trio SPICE client for usbredir, port and webdav channels of any SPICE server."""

from .channel import VmcChannel
from .session import Address, Session, SpiceLinkError, connect, parse_uri

__all__ = ["Address", "Session", "SpiceLinkError", "VmcChannel", "connect", "parse_uri"]
