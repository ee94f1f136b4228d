"""Channels added and removed while the server serves (issue 16, item 3).

A channel added while serving starts at once and is announced to every connected
session (a CHANNELS_LIST holding just that channel); removing one closes its client,
stops its device and backend and releases every buffer before `remove_channel`
returns, and later links to it get CHANNEL_NOT_AVAILABLE. usbredir follows its guest
side (offered only while open), port events travel from the backend to the client,
and in multi-session mode a port busy with another session is skipped by name lookup.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend, parse_backend
from trivmc.chardev import SpiceChardev
from trivmc.client import SpiceLinkError, connect
from trivmc.client.address import parse_uri
from trivmc.client.connection import MessageConnection, link_channel
from trivmc.protocol import (
    ChannelType,
    LinkError,
    MainCap,
    MainChannelsList,
    MsgcMain,
    MsgMain,
    PortEvent,
)
from trivmc.server import Server, ServerConfig, VmcChannel

from .test_bad_input import settle
from .test_session_boundary import Peer, push_until_blocked, read_all
from .test_tls import echo

PORT = "org.trivmc.runtime.0"
PAYLOAD = bytes(range(251)) * 400  # ~100 KB

PORT_T, USBREDIR_T, WEBDAV_T = (
    int(t) for t in (ChannelType.PORT, ChannelType.USBREDIR, ChannelType.WEBDAV)
)


def make_server(**kw: Any) -> Server:
    return Server(
        ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=8, key_process=False, **kw)
    )


def uri_of(addrs: list[object]) -> str:
    return f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]


class Driven(EchoBackend):
    """An echo backend the test drives: each command runs in the backend's own task, as
    a real backend's calls (`set_fe_open`, `port_event`) would. `opens_later`: the
    guest side opens only when told (a usbredir channel is then offered only after),
    as a backend that can stand for QEMU's side (`can_stand`) does."""

    def __init__(self, *, opens_later: bool = False, stalled: bool = False) -> None:
        self.opens_later = self.can_stand = opens_later
        self.stalled = stalled  # can_read() is 0: whatever the client sends stays queued
        self.runs = 0  # times run() started
        self.running = 0  # run() calls not ended
        self.cancelled = 0  # run() calls ended by cancellation (the backend stopped)
        self._send, self._recv = trio.open_memory_channel[Callable[[], None]](math.inf)

    def can_read(self) -> int:
        return 0 if self.stalled else super().can_read()

    async def run(self, chardev: SpiceChardev) -> None:
        self.chardev = chardev
        self.runs += 1
        self.running += 1
        try:
            if not self.opens_later:
                chardev.set_fe_open(True)
            async for command in self._recv:
                command()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def do(self, command: Callable[[SpiceChardev], None]) -> None:
        """Run `command(chardev)` in the backend's task and wait until it ran."""
        done = trio.Event()

        def run() -> None:
            try:
                assert self.chardev is not None
                command(self.chardev)
            finally:
                done.set()

        await self._send.send(run)
        with trio.fail_after(10):
            await done.wait()

    async def set_fe_open(self, is_open: bool) -> None:
        await self.do(lambda chardev: chardev.set_fe_open(is_open))

    async def port_event(self, event: int) -> None:
        await self.do(lambda chardev: chardev.port_event(event))


@asynccontextmanager
async def raw_main(uri: str, *, attach: bool = True) -> AsyncIterator[MessageConnection]:
    """A main channel read message by message (MAIN_INIT already read; with `attach`,
    ATTACH_CHANNELS sent and its CHANNELS_LIST left for the test to read)."""
    linked = await link_channel(
        parse_uri(uri), 0, ChannelType.MAIN, 0, [MainCap.NAME_AND_UUID], None
    )
    conn = MessageConnection(linked)
    async with linked.stream:
        msg = await conn.receive()
        assert msg is not None and msg.type == MsgMain.INIT
        if attach:
            await conn.send(MsgcMain.ATTACH_CHANNELS)
        yield conn


async def channels_list(conn: MessageConnection) -> list[tuple[int, int]]:
    """The next main message, which must be a CHANNELS_LIST: its channels."""
    with trio.fail_after(10):
        msg = await conn.receive()
    assert msg is not None and msg.type == MsgMain.CHANNELS_LIST, msg
    return list(MainChannelsList.decode(msg.body).channels)


async def link_refused(uri: str, session_id: int, key: tuple[int, int]) -> LinkError:
    """Link channel `key` for session `session_id`; the code it was refused with."""
    with pytest.raises(SpiceLinkError) as refused:
        linked = await link_channel(parse_uri(uri), session_id, key[0], key[1], [], None)
        await linked.stream.aclose()
    return refused.value.code


# ---- 1. added while serving: announced, opened, echoed -----------------------------


@pytest.mark.parametrize("kind", ["port", "usbredir", "webdav"])
async def test_a_channel_added_while_serving_is_announced_and_echoes(kind: str) -> None:
    server = make_server()
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        async with connect(uri, lz4=False) as before:
            assert before.channel_list == [(PORT_T, 0)]
            backend = Driven()  # an echo backend (open from the start)
            if kind == "port":
                channel = server.add_port(PORT, backend)
                key = (PORT_T, 1)
            elif kind == "usbredir":
                channel = server.add_usbredir(backend)
                key = (USBREDIR_T, 0)
            else:
                channel = server.add_webdav(backend)
                key = (WEBDAV_T, 0)
            assert channel.key == key and key in server.channel_list()
            with trio.fail_after(10):
                assert await before.wait_channel(*key) == key
            assert before.channel_list == [(PORT_T, 0), key]
            if kind == "port":
                ch = await before.open_port(PORT)
            elif kind == "usbredir":
                ch = await before.open_usbredir(0)
            else:
                ch = await before.open_webdav()
                assert await ch.wait_port_init() == "org.spice-space.webdav.0"
            assert await echo(ch, PAYLOAD) == PAYLOAD
            await ch.aclose()
            async with connect(uri, lz4=False) as after:  # (a second session: multi off)
                assert after.channel_list == sorted([(PORT_T, 0), key])  # in its first list
            await settle(lambda: channel.client is None and channel.device.idle)
            assert channel.clients_served == 1
            assert backend.runs == 1 and backend.running == 1  # started once, runs on


async def test_the_announcement_on_the_wire_holds_exactly_the_new_channel() -> None:
    server = make_server()
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        async with raw_main(uri) as main:
            assert await channels_list(main) == [(PORT_T, 0)]
            server.add_port(PORT, EchoBackend())
            assert await channels_list(main) == [(PORT_T, 1)]
            server.add_usbredir(EchoBackend())  # open from the start: announced once
            assert await channels_list(main) == [(USBREDIR_T, 0)]
            server.add_webdav(EchoBackend())  # the next message: no second usbredir list
            assert await channels_list(main) == [(WEBDAV_T, 0)]
        # a session that has not asked for the list yet is not told: its
        # ATTACH_CHANNELS answer holds the channel, once
        async with raw_main(uri, attach=False) as main:
            server.add_port("org.trivmc.late.0", EchoBackend())
            await main.send(MsgcMain.ATTACH_CHANNELS)
            assert await channels_list(main) == [
                (USBREDIR_T, 0),
                (PORT_T, 0),
                (PORT_T, 1),
                (PORT_T, 2),
                (WEBDAV_T, 0),
            ]
            server.add_port("org.trivmc.marker.0", EchoBackend())
            assert await channels_list(main) == [(PORT_T, 3)]  # nothing came between


async def test_every_connected_session_is_told(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(multi_session=True)
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        async with connect(uri) as one, connect(uri) as two:
            server.add_port(PORT, EchoBackend())
            with trio.fail_after(10):
                assert await one.wait_channel(PORT_T, 1) == (PORT_T, 1)
                assert await two.wait_channel(PORT_T, 1) == (PORT_T, 1)


# ---- 2. removal ---------------------------------------------------------------------


async def remove(server: Server, channel: VmcChannel) -> None:
    """`remove_channel`, bounded: a removal that hangs fails the test (under the
    autojump clock it would otherwise run forever)."""
    with trio.fail_after(60):
        await server.remove_channel(channel)


def assert_released(channel: VmcChannel) -> None:
    """Nothing of the channel is held any more: no client, every token back, no buffer
    or byte queued for the device, nothing pending for a client."""
    device = channel.device
    assert channel.client is None
    assert device.client is None and not channel.chardev.connected
    assert device.buffered_bytes == 0
    assert device.tokens_free == device.total_tokens
    assert device.outstanding_buffers == 0 and device.queued_buffers == 0
    assert device.idle
    assert channel.chardev.pending_size == 0


async def test_removing_an_attached_channel_with_bytes_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = Driven(stalled=True)
    server = make_server(vmc_byte_budget=256 * 1024)
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        channel = server.add_port(PORT, backend)  # added while serving, then removed
        async with connect(uri, lz4=False) as session:
            port = await session.open_port(PORT)
            sent = await push_until_blocked(port, b"x")
            await settle(lambda: channel.device.buffered_bytes >= 256 * 1024)
            assert sent > 256 * 1024 and not channel.device.idle
            assert backend.running == 1
            held = channel.device.buffered_bytes

            await remove(server, channel)

            # the backend was stopped (cancelled), and every buffer released, by then
            assert backend.running == 0 and backend.cancelled == 1
            assert_released(channel)
            # every byte held for the device is counted as dropped, the one the writer
            # was trying to write included
            assert channel.device.stats.written == 0
            assert channel.device.stats.dropped == held
            assert channel.key not in server.channels
            assert channel.key not in server.channel_list()
            # the client's channel closed: the server closed a socket it had not read
            # to the end (the client's bytes were still in it), so the kernel reset the
            # connection: a receive raises BrokenResourceError, not a clean b""
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                while await port.receive_some():
                    pass
            # the session itself lives on; links to the channel are refused now
            assert not session.closed
            refused_before = server.links_refused
            with pytest.raises(SpiceLinkError) as refused:
                await session.open_channel(*channel.key)  # (still in the session's list)
            assert refused.value.code == LinkError.CHANNEL_NOT_AVAILABLE
            with pytest.raises(LookupError, match="no port channel named"):
                await session.open_port(PORT)  # linked and refused too: no such port
            assert server.links_refused == refused_before + 2
            code = await link_refused(uri, session.session_id, channel.key)
            assert code == LinkError.CHANNEL_NOT_AVAILABLE
            other = await session.open_port("org.trivmc.first.0")  # the rest is untouched
            assert await echo(other, PAYLOAD) == PAYLOAD

        async with connect(uri, lz4=False) as later:
            assert later.channel_list == [(PORT_T, 0)]  # not offered to a new session


async def test_removing_a_tcp_port_closes_its_peer_and_drops_its_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    peer_port = await peer.start()
    server = make_server(vmc_byte_budget=256 * 1024)
    channel = server.add_port(PORT, parse_backend(f"tcp:127.0.0.1:{peer_port},reconnect=0.5")())
    async with server as addrs:
        uri = uri_of(addrs)
        async with connect(uri, lz4=False) as session:
            port = await session.open_port(PORT)
            conn = await peer.accept()  # never read until the removal: a stalled peer
            sent = await push_until_blocked(port, b"B")
            await settle(lambda: channel.device.buffered_bytes > 0)
            backend = channel.backend
            assert backend.peer is not None  # type: ignore[attr-defined]

            await remove(server, channel)

            assert_released(channel)
            assert backend.peer is None and backend.out_bytes == 0  # type: ignore[attr-defined]
            assert backend.dropped > 0  # type: ignore[attr-defined]
            got = await read_all(conn)  # returns: the backend closed its peer connection
            assert 0 < len(got) < sent and set(got) == {ord("B")}
            conn.close()
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                while await port.receive_some():
                    pass
            with trio.fail_after(10):
                assert await read_all_quietly(peer) == b""  # no reconnect to the peer


async def read_all_quietly(peer: Peer) -> bytes:
    """What a new connection to the peer would carry: b"" when none comes (the backend
    stopped and does not reconnect)."""
    with trio.move_on_after(5):
        conn = await peer.accept()
        try:
            return await read_all(conn) or b"reconnected"
        finally:
            conn.close()
    return b""


async def test_a_clean_removal_ends_the_clients_channel_with_eof() -> None:
    """With nothing left unread on the server's side, the close is a clean end of
    stream: receive_some returns b"" (and the session stays)."""
    server = make_server()
    channel = server.add_usbredir(EchoBackend())
    async with server as addrs:
        async with connect(uri_of(addrs), lz4=False) as session:
            ch = await session.open_usbredir(0)
            assert await echo(ch, PAYLOAD) == PAYLOAD
            await remove(server, channel)
            assert_released(channel)
            with trio.fail_after(10):
                assert await ch.receive_some() == b""
            assert not session.closed


async def test_remove_before_serving_twice_and_a_stranger() -> None:
    server = make_server()
    a = server.add_port("org.trivmc.a.0", Driven())
    server.add_port("org.trivmc.b.0", EchoBackend())
    await remove(server, a)  # never served: nothing to stop
    assert_released(a) and a.key not in server.channels  # type: ignore[func-returns-value]
    with pytest.raises(ValueError, match="not hosted"):
        await server.remove_channel(a)  # twice
    a2 = server.add_port("org.trivmc.a.0", EchoBackend())  # the name and id are free
    assert a2.key == a.key
    with pytest.raises(ValueError, match="not hosted"):
        await server.remove_channel(a)  # the same key, another channel: not this one
    async with server as addrs:
        async with connect(uri_of(addrs), lz4=False) as session:
            assert session.channel_list == [(PORT_T, 0), (PORT_T, 1)]
            ch = await session.open_port("org.trivmc.a.0")
            assert await echo(ch, PAYLOAD) == PAYLOAD
        await remove(server, a2)
        with pytest.raises(ValueError, match="not hosted"):
            await server.remove_channel(a2)
    assert isinstance(a.backend, Driven) and a.backend.runs == 0


async def test_a_channel_is_added_again_with_the_same_id_after_removal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server()
    first = server.add_port(PORT, Driven())
    async with server as addrs:
        uri = uri_of(addrs)
        async with connect(uri, lz4=False) as session:
            port = await session.open_port(PORT)
            await remove(server, first)
            with trio.fail_after(10):
                assert await port.receive_some() == b""
            again = server.add_port(PORT, EchoBackend())
            assert again.key == first.key == (PORT_T, 0)
            ch = await session.open_port(PORT)  # the same session, the same id
            assert await echo(ch, PAYLOAD) == PAYLOAD
            await remove(server, again)
            usb = server.add_usbredir(EchoBackend(), channel_id=5)
            await remove(server, usb)
            usb = server.add_usbredir(EchoBackend(), channel_id=5)
            with trio.fail_after(10):
                await session.wait_channel(USBREDIR_T, 5)
            ch = await session.open_usbredir(5)
            assert await echo(ch, PAYLOAD) == PAYLOAD


async def test_a_removed_channel_object_is_not_hosted_again_but_its_backend_may_be(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A removed VmcChannel is done with (`removed` stays set): hosting it again is
    refused loudly rather than hosting a channel no client could link. Its backend can
    serve a new channel."""
    server = make_server()
    backend = Driven()
    channel = server.add_port(PORT, backend)
    async with server as addrs:
        async with connect(uri_of(addrs), lz4=False) as session:
            ch = await session.open_port(PORT)
            assert await echo(ch, PAYLOAD) == PAYLOAD
            await remove(server, channel)
            assert backend.running == 0
            with pytest.raises(ValueError, match="was removed"):
                server.add_channel(channel)
            assert channel.key not in server.channels
            again = server.add_port(PORT, backend)
            assert again.key == channel.key
            ch = await session.open_port(PORT)
            assert await echo(ch, PAYLOAD) == PAYLOAD
            assert backend.runs == 2 and backend.running == 1


async def test_a_channel_added_while_the_server_starts_runs_once() -> None:
    """add_channel from another task while `serve` is still starting (making its first
    keys) starts the channel's device and backend once, not twice."""
    server = make_server()
    reached, gate = trio.Event(), trio.Event()
    make_keys = server.key_maker.run

    async def slow_keys(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        reached.set()
        await gate.wait()
        await make_keys(task_status=task_status)

    server.key_maker.run = slow_keys  # type: ignore[method-assign]
    backend = Driven()
    serving = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await nursery.start(server.serve)
            serving.set()

        nursery.start_soon(serve)
        with trio.fail_after(10):
            await reached.wait()  # serve is starting: it waits for its first keys
        channel = server.add_port(PORT, backend)
        gate.set()
        with trio.fail_after(30):
            await serving.wait()
        await settle(lambda: backend.runs > 0)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.runs == 1 and backend.running == 1
        await remove(server, channel)
        assert backend.running == 0
        nursery.cancel_scope.cancel()


# ---- 3. multi-session: a busy port is skipped by name --------------------------------


async def test_a_port_busy_with_another_session_is_skipped_by_name() -> None:
    server = make_server(multi_session=True)
    a = server.add_port("org.trivmc.a.0", EchoBackend())
    b = server.add_port("org.trivmc.b.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        async with connect(uri, lz4=False) as one, connect(uri, lz4=False) as two:
            held = await one.open_port("org.trivmc.a.0")  # the lowest id
            port_b = await two.open_port("org.trivmc.b.0")  # A tried first: busy, skipped
            assert port_b.port_name == "org.trivmc.b.0" and port_b.channel_id == b.channel_id
            assert await echo(port_b, PAYLOAD) == PAYLOAD
            with pytest.raises(LookupError, match="busy"):
                await two.open_port("org.trivmc.a.0")
            assert a.clients_refused == 2
            assert await echo(held, PAYLOAD) == PAYLOAD  # the holder never noticed
            await held.aclose()
            await settle(lambda: a.client is None)
            port_a = await two.open_port("org.trivmc.a.0")  # free now
            assert await echo(port_a, PAYLOAD) == PAYLOAD


# ---- 4. port events from the backend -------------------------------------------------


async def test_port_events_from_the_backend_reach_the_client_in_order() -> None:
    backend = Driven()
    server = make_server()
    channel = server.add_port(PORT, backend)
    usb_backend = Driven()
    server.add_usbredir(usb_backend)
    async with server as addrs:
        await backend.port_event(99)  # no client attached: nothing sent, nothing fails
        await usb_backend.port_event(7)  # usbredir has no port events: ignored
        async with connect(uri_of(addrs), lz4=False) as session:
            port = await session.open_port(PORT)
            await settle(lambda: channel.chardev.connected)
            await backend.port_event(7)
            await backend.port_event(PortEvent.BREAK)
            await backend.port_event(255)
            with trio.fail_after(10):  # (the 99 sent with no client was not kept for it)
                assert await port.next_event() == 7
                assert await port.next_event() is PortEvent.BREAK
                assert await port.next_event() == 255
            assert port.opened is True  # application events leave `opened` alone
            await backend.set_fe_open(False)
            await backend.set_fe_open(True)
            with trio.fail_after(10):
                assert await port.next_event() is PortEvent.CLOSED
                assert await port.next_event() is PortEvent.OPENED
            assert await echo(port, PAYLOAD) == PAYLOAD  # data and events share the stream
            await port.aclose()
            await settle(lambda: not channel.chardev.connected)
            await backend.port_event(9)  # the client left: nothing sent, nothing fails
        assert backend.running == 1


async def test_a_port_event_is_one_byte() -> None:
    backend = Driven()
    server = make_server()
    server.add_port(PORT, backend)
    with pytest.raises(ValueError):
        server.channels[(PORT_T, 0)].chardev.port_event(256)  # no client: still refused
    with pytest.raises(ValueError):
        server.channels[(PORT_T, 0)].chardev.port_event(-1)


# ---- 5. usbredir follows its guest side ----------------------------------------------


async def test_usbredir_is_offered_only_while_its_guest_side_is_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = Driven(opens_later=True)
    server = make_server(multi_session=True)  # the raw main and the client side by side
    server.add_port("org.trivmc.first.0", EchoBackend())
    usb = server.add_usbredir(backend)
    assert not usb.available and server.channel_list() == [(PORT_T, 0)]
    async with server as addrs:
        uri = uri_of(addrs)
        async with raw_main(uri) as main, connect(uri, lz4=False) as session:
            # closed: not listed, not linkable
            assert await channels_list(main) == [(PORT_T, 0)]
            assert session.channel_list == [(PORT_T, 0)]
            code = await link_refused(uri, session.session_id, (USBREDIR_T, 0))
            assert code == LinkError.CHANNEL_NOT_AVAILABLE

            # opened: announced (alone), opened, echoes
            await backend.set_fe_open(True)
            assert await channels_list(main) == [(USBREDIR_T, 0)]
            with trio.fail_after(10):
                assert await session.wait_channel(USBREDIR_T, 0) == (USBREDIR_T, 0)
            ch = await session.open_usbredir(0)
            assert await echo(ch, PAYLOAD) == PAYLOAD

            # closed while attached: the client's channel is closed, the channel withdrawn
            await backend.set_fe_open(False)
            with trio.fail_after(10):
                assert await ch.receive_some() == b""
            await settle(lambda: usb.client is None)
            assert_released(usb)
            assert server.channel_list() == [(PORT_T, 0)]
            with pytest.raises(SpiceLinkError) as refused:
                await session.open_usbredir(0)  # (still in the session's list)
            assert refused.value.code == LinkError.CHANNEL_NOT_AVAILABLE

            # opened again: announced once more, and only once
            await backend.set_fe_open(True)
            await backend.set_fe_open(True)  # no change: nothing
            assert await channels_list(main) == [(USBREDIR_T, 0)]
            server.add_port("org.trivmc.marker.0", EchoBackend())
            assert await channels_list(main) == [(PORT_T, 1)]  # nothing came between
            ch = await session.open_usbredir(0)
            assert await echo(ch, PAYLOAD) == PAYLOAD
        assert backend.runs == 1


async def test_a_usbredir_channel_added_while_serving_is_announced_when_it_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server()
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        uri = uri_of(addrs)
        async with raw_main(uri) as main:
            assert await channels_list(main) == [(PORT_T, 0)]
            backend = Driven(opens_later=True)
            usb = server.add_usbredir(backend)
            await settle(lambda: backend.running == 1)
            assert not usb.available
            await backend.set_fe_open(True)
            assert await channels_list(main) == [(USBREDIR_T, 0)]
            server.add_port("org.trivmc.marker.0", EchoBackend())
            assert await channels_list(main) == [(PORT_T, 1)]  # announced once
            # removed while open: the guest side opening again announces nothing
            await remove(server, usb)
            usb.chardev.set_fe_open(False)
            usb.chardev.set_fe_open(True)
            server.add_port("org.trivmc.marker.1", EchoBackend())
            assert await channels_list(main) == [(PORT_T, 2)]


# ---- 6. WebSocket sessions are never told of usbredir ---------------------------------


async def test_websocket_sessions_get_no_usbredir_announcements(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server(multi_session=True)
    server.add_port("org.trivmc.first.0", EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        async with (
            connect(f"ws://127.0.0.1:{port}", lz4=False) as browser,
            connect(f"spice://127.0.0.1:{port}", lz4=False) as native,
        ):
            server.add_usbredir(EchoBackend())  # open at once
            later = Driven(opens_later=True)
            server.add_usbredir(later, channel_id=1)
            await later.set_fe_open(True)  # opens later
            server.add_webdav(EchoBackend())
            with trio.fail_after(10):
                await native.wait_channel(USBREDIR_T, 1)
                await native.wait_channel(WEBDAV_T)
                await browser.wait_channel(WEBDAV_T)  # after the usbredir ones
            assert browser.channel_list == [(PORT_T, 0), (WEBDAV_T, 0)]
            assert native.channel_list == [
                (PORT_T, 0),
                (USBREDIR_T, 0),
                (USBREDIR_T, 1),
                (WEBDAV_T, 0),
            ]
            ch = await browser.open_webdav()
            assert await echo(ch, PAYLOAD) == PAYLOAD


# ---- the server stopping with clients attached -----------------------------------------


async def test_stopping_the_server_with_clients_attached_logs_no_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same race as a removal: the client's clean-up ran while its channel's device
    task was ending and raised into the connection ("internal error" with a traceback,
    on about every other stop)."""
    for _ in range(10):
        server = make_server()
        server.add_port(PORT, EchoBackend())
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(server.serve)
            async with connect(uri_of(addrs), lz4=False) as session:
                port = await session.open_port(PORT)
                assert await echo(port, b"x") == b"x"
                nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
