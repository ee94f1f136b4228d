"""The link handshake's events, returned by `ServerLink.feed` and `ClientLink.feed`.

Events that ask for bytes to be written carry them in `data`: that and the return
values of the machines' methods are the only way bytes come out of a link machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import AuthMechanism, LinkError
from .link_codec import LinkMess, LinkReply


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """Server side: a well-formed SpiceLinkMess arrived; call accept() or refuse()."""

    mess: LinkMess


@dataclass(frozen=True, slots=True)
class TicketReceived:
    """Server side: the encrypted ticket arrived; verify it and call result()."""

    ticket: bytes
    mechanism: AuthMechanism


@dataclass(frozen=True, slots=True)
class LinkReplyReceived:
    """Client side: the server's OK reply arrived; send `data` (the auth mechanism when
    both sides set AUTH_SELECTION, then the encrypted ticket) and keep feeding."""

    reply: LinkReply
    data: bytes


@dataclass(frozen=True, slots=True)
class Linked:
    """Client side: the link result was OK. `mini_header` is the negotiated framing;
    `peer_lz4` tells whether the server takes COMPRESSED_DATA on this VMC channel."""

    mini_header: bool
    peer_common_caps: tuple[int, ...]
    peer_channel_caps: tuple[int, ...]
    peer_lz4: bool = False


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The link failed with `code`; send `data` (may be empty: the client side never
    sends anything on failure) and close."""

    code: LinkError
    data: bytes = b""
    reason: str = ""


#: What `ServerLink` and `ClientLink` report.
LinkEvent = LinkRequest | TicketReceived | LinkReplyReceived | Linked | LinkFailed
