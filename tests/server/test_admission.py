"""Connections still linking are bounded per source address and in total, hold no link
key before their link message is complete, and cannot lock a real client out."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.client import connect
from trivmc.protocol import ChannelType, ClientLink
from trivmc.server import Server, ServerConfig
from trivmc.server.admission import PendingLinks, source_key

from .test_bad_input import ECHO, settle
from .test_tls import echo


def test_per_source_bound_refuses_and_total_bound_drops_the_oldest() -> None:
    links = PendingLinks(max_total=3, max_per_source=2)
    a1, a2 = links.admit("10.0.0.1"), links.admit("10.0.0.1")
    assert a1 and a2 and links.admit("10.0.0.1") is None
    assert links.refused == 1
    b1 = links.admit("10.0.0.2")
    assert b1 and len(links) == 3
    c1 = links.admit(None)  # a unix peer: only the total counts; the oldest goes
    assert c1 is not None and a1.evicted and a1.scope.cancel_called
    assert links.evicted == 1 and len(links) == 3 and links.from_source("10.0.0.1") == 1
    assert links.admit("10.0.0.1") is not None  # room for that source again
    for link in (a1, a2, b1, c1):
        links.done(link)
        links.done(link)  # idempotent
    assert len(links) == 1 and links.from_source("10.0.0.2") == 0


@pytest.mark.parametrize(
    ("addr", "key"),
    [
        (("192.0.2.7", 5000), "192.0.2.7"),
        (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
        (("2001:db8:1:2:aa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bb::9", 1, 0, 0), "2001:db8:1:2::/64"),
        ("", None),
    ],
)
def test_source_keys(addr: object, key: str | None) -> None:
    assert source_key(0, addr) == key


async def half_open(port: int, source: str, data: bytes) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    if data:
        await sock.send(data)
    return sock


async def test_key_taken_only_for_a_complete_link_message() -> None:
    """With a password every link needs a fresh key; connections that sent only the
    magic or part of the link message take none."""
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], password="pw", key_pool_size=8)
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        await server.key_maker.wait_full()
        socks = [await half_open(port, "127.0.0.1", b"REDQ\x02\0\0\0") for _ in range(30)]
        await settle(lambda: server.pending_links == 30)
        assert len(server.keys) == 8  # not one taken
        async with connect(f"spice://127.0.0.1:{port}", password="pw") as s:
            ch = await s.open_port(ECHO)
            assert await echo(ch, b"in") == b"in"
        for sock in socks:
            sock.close()


async def test_one_source_cannot_hold_more_than_its_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=4, max_pending_per_source=8)
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        socks = [await half_open(port, "127.0.0.2", b"RE") for _ in range(20)]
        await settle(lambda: server.connections == 20)
        assert server.pending_links == 8 and server.pending.refused == 12
        assert "connection refused: 8 connections from this address" in caplog.text
        async with connect(f"spice://127.0.0.1:{port}") as s:  # another source: served
            ch = await s.open_port(ECHO)
            assert await echo(ch, b"in") == b"in"
        for sock in socks:
            sock.close()
        await settle(lambda: server.pending_links == 0)


async def test_a_real_client_links_while_1000_others_sit_half_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1000 connections from 40 addresses (idle, magic only, or a link message without
    its ticket): the total bound drops the oldest for each new one, so a real client
    that completes its link is never locked out."""
    caplog.set_level(logging.INFO, logger="trivmc")
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=16, max_pending_links=256)
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        link_mess = ClientLink(0, ChannelType.MAIN, 0).initiate()  # the ticket never comes
        payloads = [b"", b"REDQ", link_mess]
        socks = []
        for i in range(1000):
            socks.append(await half_open(port, f"127.0.0.{2 + i % 40}", payloads[i % 3]))
        await settle(lambda: server.connections == 1000)
        assert server.pending_links <= 256
        assert server.pending.evicted >= 1000 - 256
        with trio.fail_after(10):
            async with connect(f"spice://127.0.0.1:{port}") as s:
                ch = await s.open_port(ECHO)
                assert await echo(ch, b"through") == b"through"
        for sock in socks:
            sock.close()
        await settle(lambda: server.pending_links == 0)
