"""The server's link decisions alone: no sockets, no server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trivmc.protocol import ChannelType, LinkError, LinkMess, MainCap, VmcCap, caps_to_words
from trivmc.server.config import ServerConfig
from trivmc.server.link_policy import ChannelKey, LinkPolicy


@dataclass
class Via:
    secure: bool = False
    websocket: bool = False


PLAIN, TLS, WS = Via(), Via(secure=True), Via(websocket=True)
HOSTED: set[ChannelKey] = {(ChannelType.PORT, 0), (ChannelType.USBREDIR, 0)}


def policy(config: ServerConfig | None = None, hosted: set[ChannelKey] = HOSTED) -> LinkPolicy:
    return LinkPolicy(config or ServerConfig(), lambda key: key in hosted)


def mess(ctype: int, cid: int = 0, lz4: bool = False) -> LinkMess:
    caps = tuple(caps_to_words([VmcCap.DATA_COMPRESS_LZ4])) if lz4 else ()
    return LinkMess(0, ctype, cid, (), caps)


def test_main_is_channel_zero_only() -> None:
    assert policy().check(mess(ChannelType.MAIN), PLAIN) == (LinkError.OK, "")
    code, why = policy().check(mess(ChannelType.MAIN, 1), PLAIN)
    assert code == LinkError.CHANNEL_NOT_AVAILABLE and why == "channel 1:1 not hosted"


def test_unhosted_or_unavailable_channel() -> None:
    assert policy().check(mess(ChannelType.PORT, 1), PLAIN)[0] == LinkError.CHANNEL_NOT_AVAILABLE
    assert policy().check(mess(ChannelType.WEBDAV), PLAIN)[0] == LinkError.CHANNEL_NOT_AVAILABLE
    hosted: set[ChannelKey] = set()
    p = policy(hosted=hosted)  # asked per call: a channel may come and go
    assert p.channel_status(mess(ChannelType.PORT), PLAIN) == LinkError.CHANNEL_NOT_AVAILABLE
    hosted.add((ChannelType.PORT, 0))
    assert p.channel_status(mess(ChannelType.PORT), PLAIN) == LinkError.OK


@pytest.mark.parametrize(
    ("secure_channels", "plaintext_channels", "via", "expected", "why"),
    [
        ({ChannelType.PORT}, set(), PLAIN, LinkError.NEED_SECURED, "must be secure"),
        ({ChannelType.PORT}, set(), TLS, LinkError.OK, ""),
        (set(), {ChannelType.PORT}, TLS, LinkError.NEED_UNSECURED, "must be plain"),
        (set(), {ChannelType.PORT}, PLAIN, LinkError.OK, ""),
        (set(), set(), TLS, LinkError.OK, ""),
    ],
)
def test_security_rules(
    secure_channels: set[ChannelType],
    plaintext_channels: set[ChannelType],
    via: Via,
    expected: LinkError,
    why: str,
) -> None:
    config = ServerConfig(
        secure_channels=frozenset(secure_channels),
        plaintext_channels=frozenset(plaintext_channels),
    )
    code, reason = policy(config).check(mess(ChannelType.PORT), via)
    assert code == expected and reason.endswith(why)


def test_security_comes_before_availability() -> None:
    config = ServerConfig(secure_channels=frozenset({ChannelType.WEBDAV}))
    code, why = policy(config).check(mess(ChannelType.WEBDAV), PLAIN)  # WEBDAV is not hosted
    assert code == LinkError.NEED_SECURED and why == "channel 11:0 must be secure"


def test_browser_rules() -> None:
    p = policy()
    usb = mess(ChannelType.USBREDIR, lz4=True)
    assert p.check(usb, PLAIN)[0] == LinkError.OK
    assert p.check(usb, WS)[0] == LinkError.CHANNEL_NOT_AVAILABLE
    assert p.offered((ChannelType.USBREDIR, 0), PLAIN)
    assert not p.offered_to(WS)((ChannelType.USBREDIR, 0))
    assert p.offered_to(WS)((ChannelType.PORT, 0))


def test_caps_and_lz4() -> None:
    p = policy()
    assert p.caps_for(mess(ChannelType.PORT), PLAIN) == [VmcCap.DATA_COMPRESS_LZ4]
    assert p.caps_for(mess(ChannelType.PORT), WS) == []  # no LZ4 over WebSocket
    assert p.caps_for(mess(ChannelType.MAIN), PLAIN) == [
        MainCap.SEMI_SEAMLESS_MIGRATE,
        MainCap.SEAMLESS_MIGRATE,
    ]
    assert p.client_lz4(mess(ChannelType.PORT, lz4=True), PLAIN)
    assert not p.client_lz4(mess(ChannelType.PORT, lz4=True), WS)
    assert not p.client_lz4(mess(ChannelType.PORT), PLAIN)
