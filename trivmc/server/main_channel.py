"""The main channel client: MAIN_INIT (then MAIN_NAME and MAIN_UUID when set and the
client has NAME_AND_UUID), then CHANNELS_LIST on ATTACH_CHANNELS, and a CHANNELS_LIST
of each channel that appears later (spice-server's registered-new-channel)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

import trio

from ..protocol import MainChannelsList, MainInit, MsgcMain, MsgMain, name_and_uuid
from ..protocol.messages import Body
from .channel import ChannelClient, ChannelOptions, UnknownMessage

log = logging.getLogger(__name__)

# client main messages a VMC-only server accepts and ignores (agent, mouse, migration)
IGNORED = frozenset(m for m in MsgcMain if m is not MsgcMain.ATTACH_CHANNELS)


class MainChannelClient(ChannelClient):
    """Sends MAIN_INIT with the session id, then the guest's name and UUID to a client
    that has NAME_AND_UUID (`client_caps`: its main channel capability words); answers
    ATTACH_CHANNELS with every hosted channel. Never claims an agent."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        *,
        session_id: int,
        channels: Callable[[], list[tuple[int, int]]],
        offered: Callable[[tuple[int, int]], bool] = lambda _key: True,
        client_caps: Sequence[int] = (),
        name: str | None = None,
        uuid: UUID | None = None,
    ) -> None:
        super().__init__(stream, opts)
        self.session_id = session_id
        self.client_caps = tuple(client_caps)
        self.vm_name = name
        self.vm_uuid = uuid
        self._channels = channels
        self._offered = offered
        self.attached = False

    async def on_start(self) -> None:
        mm_time = (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF
        self.send(MsgMain.INIT, MainInit(self.session_id, multi_media_time=mm_time).encode())
        for mtype, body in name_and_uuid(self.client_caps, self.vm_name, self.vm_uuid):
            self.send(mtype, body)

    async def handle_message(self, mtype: int, body: Body) -> None:
        if mtype == MsgcMain.ATTACH_CHANNELS:
            self.attached = True
            self.send(MsgMain.CHANNELS_LIST, MainChannelsList(tuple(self._channels())).encode())
        elif mtype in IGNORED:
            log.debug("%s: ignoring main message %d", self.name, mtype)
        else:
            raise UnknownMessage(f"{self.name}: unknown main message type {mtype}")

    def announce(self, channels: list[tuple[int, int]]) -> None:
        """Tell the client of channels that appeared, once it has asked for the list
        (before that, its ATTACH_CHANNELS answer will hold them)."""
        new = [key for key in channels if self._offered(key)]
        if self.attached and new:
            self.send(MsgMain.CHANNELS_LIST, MainChannelsList(tuple(new)).encode())
