"""The server's own counters: wire bytes and messages per channel (live and ended
connections), links accepted by channel type and refused by reason, sessions."""

from __future__ import annotations

import os

import pytest
import trio

from trivmc.backends import EchoBackend
from trivmc.client import SpiceLinkError, connect
from trivmc.protocol import MINI_HEADER_SIZE, ChannelType, LinkError, PortInit
from trivmc.server import Server, ServerConfig

from .test_bad_input import ECHO, settle

CHUNK = 64 * 1024  # trivmc's client sends DATA of at most this


async def test_wire_bytes_and_messages_per_channel_survive_the_client() -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, password="pw"))
    channel = server.add_port(ECHO, EchoBackend())
    payload = os.urandom(3 * CHUNK + 100)  # 4 DATA messages, never compressed
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        with pytest.raises(SpiceLinkError):
            async with connect(uri, password="wrong"):
                pass
        async with connect(uri, password="pw", lz4=False) as session:
            port = await session.open_port(ECHO)
            await port.send_all(payload)
            got = b""
            with trio.fail_after(30):
                while len(got) < len(payload):
                    got += await port.receive_some()
            live = channel.traffic_now
            assert live.bytes_in == len(payload) + 4 * MINI_HEADER_SIZE
            assert live.messages_in == 4
            init = PortInit(ECHO.encode(), True).encode()  # then the echo, as DATA
            headers = live.messages_out * MINI_HEADER_SIZE
            assert live.bytes_out == len(init) + len(payload) + headers
            assert channel.traffic.bytes_in == 0  # the client is still linked
            assert len(server.main_clients) == 1 and len(server.sessions) == 1
        await settle(lambda: channel.client is None and not server.main_clients)
        assert channel.traffic_now == channel.traffic == live  # moved, not lost or doubled
        assert server.main_traffic.messages_in > 0 and server.main_traffic.messages_out > 0
    assert server.links_accepted == {ChannelType.MAIN: 1, ChannelType.PORT: 1}
    assert server.links_refused_by == {LinkError.PERMISSION_DENIED: 1}
    assert server.links_refused == 1 and server.sessions.created == 1
