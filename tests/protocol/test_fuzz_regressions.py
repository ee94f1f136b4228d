"""Regressions the fuzz harnesses (tests/fuzz) found in `trivmc.protocol`."""

from __future__ import annotations

from trivmc.protocol import (
    SERVER_COMMON_CAPS,
    ChannelType,
    ClientLink,
    LinkError,
    LinkFailed,
    LinkReply,
    caps_to_words,
    encode_reply,
)


def test_client_link_sends_nothing_when_the_server_key_is_bad() -> None:
    """An OK reply whose public key is not RSA-1024 fails the link; the client used to
    queue the AUTH_SPICE mechanism word first and leave it to be sent."""
    common = tuple(caps_to_words(SERVER_COMMON_CAPS))
    reply = encode_reply(LinkReply(LinkError.OK, b"\x30" + bytes(161), common, ()))
    client = ClientLink(0, ChannelType.MAIN, 0)
    client.initiate()
    (event,) = client.feed(reply)
    assert isinstance(event, LinkFailed) and event.code == LinkError.INVALID_DATA
    assert event.data == b""
