"""What the server allows and offers at the link, in one object testable without I/O.

The rules: spice-server's security check (`ServerConfig.link_security`), which channels
are hosted and available, the browser rules (usbredir is neither offered nor linked over
WebSocket; no LZ4 over WebSocket), and the capabilities advertised in the link reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..protocol import VMC_CHANNEL_TYPES, ChannelType, LinkError, LinkMess, MainCap, VmcCap
from .config import ServerConfig

ChannelKey = tuple[int, int]  # (channel type, channel id)


class Via(Protocol):
    """What a connection came over (the server's per-connection record has these)."""

    @property
    def secure(self) -> bool: ...

    @property
    def websocket(self) -> bool: ...


class LinkPolicy:
    """The link decisions of a server.

    `available(key)` tells whether a VMC channel is hosted and its backend open right
    now; it is asked on every call, so channels may come and go. Every method is pure
    given that answer and `config` (read per call: the config may change at runtime).
    """

    def __init__(self, config: ServerConfig, available: Callable[[ChannelKey], bool]) -> None:
        self.config = config
        self._available = available

    def check(self, mess: LinkMess, via: Via) -> tuple[LinkError, str]:
        """The answer to a complete link request: (OK, "") or the refusal code and why.
        Security comes first (spice-server's order), then the channel."""
        where = f"channel {mess.channel_type}:{mess.channel_id}"
        code = self.config.link_security(mess.channel_type, via.secure)
        if code != LinkError.OK:
            why = "must be secure" if code == LinkError.NEED_SECURED else "must be plain"
            return code, f"{where} {why}"
        code = self.channel_status(mess, via)
        if code != LinkError.OK:
            return code, f"{where} not hosted"
        return LinkError.OK, ""

    def channel_status(self, mess: LinkMess, via: Via) -> LinkError:
        """OK when the channel may be linked now over `via`, else CHANNEL_NOT_AVAILABLE:
        main is channel 0 only; a VMC channel must be available and, over WebSocket,
        not usbredir. Asked again once the ticket is in (the channel may have gone)."""
        if mess.channel_type == ChannelType.MAIN:
            return LinkError.OK if mess.channel_id == 0 else LinkError.CHANNEL_NOT_AVAILABLE
        if not self._available((mess.channel_type, mess.channel_id)):
            return LinkError.CHANNEL_NOT_AVAILABLE
        if not self.offered((mess.channel_type, mess.channel_id), via):
            return LinkError.CHANNEL_NOT_AVAILABLE  # not offered to browsers
        return LinkError.OK

    def offered(self, key: ChannelKey, via: Via) -> bool:
        """Whether a channel is offered to a session over `via`: usbredir only off
        WebSocket (browsers have no USB redirection)."""
        return not (via.websocket and key[0] == ChannelType.USBREDIR)

    def offered_to(self, via: Via) -> Callable[[ChannelKey], bool]:
        """`offered` bound to one connection (for the main channel's channel list)."""
        return lambda key: self.offered(key, via)

    def caps_for(self, mess: LinkMess, via: Via) -> list[int]:
        """The channel capabilities of the link reply: DATA_COMPRESS_LZ4 on a VMC
        channel unless over WebSocket; SEMI_SEAMLESS_MIGRATE and SEAMLESS_MIGRATE on
        main (as spice-server: a client asks a destination for a seamless move only
        when it has the latter)."""
        if mess.channel_type not in VMC_CHANNEL_TYPES:
            return [MainCap.SEMI_SEAMLESS_MIGRATE, MainCap.SEAMLESS_MIGRATE]
        return vmc_channel_caps(lz4=not via.websocket)

    def client_lz4(self, mess: LinkMess, via: Via) -> bool:
        """Whether the server may send COMPRESSED_DATA to this VMC client: it advertised
        DATA_COMPRESS_LZ4 and it is not over WebSocket."""
        return mess.has_channel(VmcCap.DATA_COMPRESS_LZ4) and not via.websocket


def vmc_channel_caps(lz4: bool = True) -> list[int]:
    """What a trivmc server advertises on a VMC channel (LZ4 unless told not to)."""
    return [VmcCap.DATA_COMPRESS_LZ4] if lz4 else []
