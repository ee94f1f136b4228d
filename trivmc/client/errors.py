"""What the client raises, besides trio's stream errors.

The vocabulary:

- `SpiceLinkError`: the server refused a link (its SpiceLinkErr in `code`), or closed
  the connection during it (`code` ERROR);
- `ChannelNotFound` (a `LookupError`): no channel, or no port of that name, to open;
- `MainChannelClosed` (a `ConnectionError`, so an `OSError`): the server closed the
  main channel before the session was set up;
- `trivmc.protocol.ProtocolError` (and its `WebSocketError`): the server sent what
  SPICE (or WebSocket) does not allow;
- on the channel streams, trio's `BrokenResourceError` (connection lost),
  `ClosedResourceError` (closed here) and `BusyResourceError` (concurrent use);
- `ValueError` for a bad URI, `OSError` when the server cannot be reached.

The subclasses keep the builtin bases they replace, so `except LookupError` and
`except OSError` go on catching them.
"""

from __future__ import annotations

from ..protocol import LinkError


class SpiceLinkError(Exception):
    """The server refused a link; `code` is its SpiceLinkErr."""

    def __init__(self, code: LinkError, message: str) -> None:
        self.code = code
        super().__init__(message)


class ChannelNotFound(LookupError):
    """The server offers no such channel (or no port channel with that name)."""


class MainChannelClosed(ConnectionError):
    """The server closed the main channel before the session was set up."""
