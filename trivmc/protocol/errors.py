"""The protocol layer's exceptions. Decoders raise only `ProtocolError` subclasses."""

from __future__ import annotations

from .constants import LinkError


class ProtocolError(Exception):
    """Malformed, truncated, oversized or otherwise invalid protocol data."""


class TruncatedMessage(ProtocolError):
    """A message body is shorter than its fixed layout."""


class MessageTooLarge(ProtocolError):
    """A declared size is above the configured bound (raised before buffering)."""


class DecompressError(ProtocolError):
    """Compressed data is not LZ4, has a bad stated size, or does not decompress to it."""


class LinkProtocolError(ProtocolError):
    """The link handshake failed; `code` is the SpiceLinkErr to report or that was received."""

    def __init__(self, code: LinkError, message: str = "") -> None:
        self.code = LinkError(code)
        super().__init__(message or f"link error {self.code.name} ({int(self.code)})")
