"""The client's side of channels that come and go while a session lives: the channel
list, `wait_channel`, and `open_port` by name across removals and re-additions."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.client import ChannelNotFound, SpiceLinkError, connect
from trivmc.protocol import ChannelType, LinkError
from trivmc.server import Server, ServerConfig

PORT_T, USBREDIR_T = int(ChannelType.PORT), int(ChannelType.USBREDIR)


def make_server(**kw: Any) -> Server:
    return Server(
        ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=8, key_process=False, **kw)
    )


def uri_of(addrs: list[object]) -> str:
    return f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]


async def echoes(ch: Any) -> None:
    await ch.send_all(b"ping")
    got = b""
    with trio.fail_after(10):
        while len(got) < 4:
            data = await ch.receive_some()
            assert data
            got += data
    assert got == b"ping"


async def test_channel_list_and_wait_channel() -> None:
    server = make_server()
    server.add_port("org.trivmc.a.0", EchoBackend())
    async with server as addrs, connect(uri_of(addrs)) as session:
        listed = session.channel_list
        assert listed == [(PORT_T, 0)]
        listed.append((1, 2))  # a copy: the session's own list is untouched
        assert session.channel_list == [(PORT_T, 0)]
        with trio.fail_after(1):  # listed already: at once
            assert await session.wait_channel(PORT_T) == (PORT_T, 0)
            assert await session.wait_channel(PORT_T, 0) == (PORT_T, 0)

        got: list[tuple[int, int]] = []

        async def wait(channel_type: int, channel_id: int | None) -> None:
            got.append(await session.wait_channel(channel_type, channel_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, PORT_T, 1)  # that id: not port 0
            nursery.start_soon(wait, USBREDIR_T, None)  # any id
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            server.add_usbredir(EchoBackend(), channel_id=3)
            server.add_port("org.trivmc.b.0", EchoBackend())
        assert sorted(got) == [(USBREDIR_T, 3), (PORT_T, 1)]
        assert session.channel_list == [(PORT_T, 0), (USBREDIR_T, 3), (PORT_T, 1)]


async def test_wait_channel_ends_when_the_session_ends() -> None:
    server = make_server()  # single session: a second main link replaces the first
    server.add_port("org.trivmc.a.0", EchoBackend())
    async with server as addrs, connect(uri_of(addrs)) as session:
        async with trio.open_nursery() as nursery:

            async def replace() -> None:
                await trio.testing.wait_all_tasks_blocked()
                async with connect(uri_of(addrs)):
                    pass

            nursery.start_soon(replace)
            with pytest.raises(trio.ClosedResourceError), trio.fail_after(10):
                await session.wait_channel(USBREDIR_T)  # never offered: the session ends
        assert session.closed
        with pytest.raises(trio.ClosedResourceError):
            await session.wait_channel(USBREDIR_T)  # at once once closed


async def test_open_port_skips_a_removed_port() -> None:
    """SPICE cannot withdraw a channel from a client's list: a port removed since is
    still listed, and its link is refused (CHANNEL_NOT_AVAILABLE). Looking up another
    port by name goes past it."""
    server = make_server()
    a = server.add_port("org.trivmc.a.0", EchoBackend())
    server.add_port("org.trivmc.b.0", EchoBackend())
    async with server as addrs, connect(uri_of(addrs)) as session:
        await server.remove_channel(a)
        assert session.channel_list == [(PORT_T, 0), (PORT_T, 1)]  # still listed
        b = await session.open_port("org.trivmc.b.0")  # port 0 is tried first
        await echoes(b)
        with pytest.raises(ChannelNotFound, match=r"no port channel named 'org\.trivmc\.a\.0'$"):
            await session.open_port("org.trivmc.a.0")
        with pytest.raises(SpiceLinkError) as refused:
            await session.open_channel(PORT_T, 0)  # linking it by id says why
        assert refused.value.code == LinkError.CHANNEL_NOT_AVAILABLE


async def test_open_port_follows_a_port_added_again_under_another_name() -> None:
    """A port's name is learnt from its PORT_INIT and remembered; an id that is
    announced again (removed, then added with another name) is asked again."""
    server = make_server()
    a = server.add_port("org.trivmc.a.0", EchoBackend())
    async with server as addrs, connect(uri_of(addrs)) as session:
        await echoes(await session.open_port("org.trivmc.a.0"))  # port 0 is "a.0"
        await server.remove_channel(a)
        server.add_port("org.trivmc.c.0", EchoBackend())  # port 0 again, now "c.0"
        server.add_port("org.trivmc.a.0", EchoBackend())  # and "a.0" is port 1
        with trio.fail_after(10):
            await session.wait_channel(PORT_T, 1)
        await echoes(await session.open_port("org.trivmc.c.0"))
        a_again = await session.open_port("org.trivmc.a.0")
        assert a_again.channel_id == 1
        await echoes(a_again)
