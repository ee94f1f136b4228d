"""Resets at every phase of a connection end that connection only.

Each case opens a connection, takes it to one phase (before accept, mid-magic, during
the link, the TLS handshake, the WebSocket upgrade, in the middle of a message...) and
resets it (SO_LINGER 0, then close: the server sees ECONNRESET). Afterwards the server
must still serve a bystander that was linked before and a fresh client, log the reset
connection in at most one line, and have every counter back at idle.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, Request

from trivmc.backends import EchoBackend
from trivmc.client import connect
from trivmc.protocol import (
    ChannelType,
    ClientLink,
    LinkReplyReceived,
    MessageEncoder,
    MsgcMain,
    MsgcVmc,
)
from trivmc.server import Server, ServerConfig
from trivmc.transport import server_tls_context

from .test_bad_input import ECHO, settle
from .test_tls import echo

LINGER_0 = struct.pack("ii", 1, 0)


class Target:
    """The server under test: its plain and TLS ports and a client TLS context."""

    def __init__(self, server: Server, plain: int, tls: int, client_tls: ssl.SSLContext):
        self.server = server
        self.plain = plain
        self.tls = tls
        self.client_tls = client_tls
        self.session_id = 0  # the bystander's session (a VMC link needs a live one)


def reset(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, LINGER_0)
    sock.close()


def blocking_connect(port: int) -> trio.socket.SocketType:
    """Connected without a checkpoint: the server has not run, so has not accepted."""
    sock = socket.create_connection(("127.0.0.1", port))
    return trio.socket.from_stdlib_socket(sock)


async def connected(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    return sock


async def send(sock: trio.socket.SocketType, data: bytes) -> None:
    while data:
        data = data[await sock.send(data) :]


async def until_server_idle() -> None:
    """Let the server take in what was sent: every task blocked again."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)


async def recv_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    out = b""
    with trio.fail_after(10):
        while len(out) < n:
            data = await sock.recv(n - len(out))
            assert data, "server closed"
            out += data
    return out


def link_bytes(
    ctype: int = ChannelType.MAIN, conn_id: int = 0, cid: int = 0
) -> tuple[ClientLink, bytes]:
    machine = ClientLink(conn_id, ctype, cid)
    return machine, machine.initiate()


async def linked_socket(
    t: Target, ctype: int, conn_id: int = 0, cid: int = 0
) -> tuple[trio.socket.SocketType, bytes]:
    """A plain socket through a whole link; returns it and the bytes after the link."""
    sock = await connected(t.plain)
    machine, first = link_bytes(ctype, conn_id, cid)
    await send(sock, first)
    with trio.fail_after(10):
        while not machine.done:
            data = await sock.recv(65536)
            assert data, "link refused"
            for ev in machine.feed(data):
                if isinstance(ev, LinkReplyReceived):
                    await send(sock, ev.data)
    return sock, machine.trailing


# ---- the cases: each leaves a socket to reset --------------------------------------


async def before_accept(t: Target) -> trio.socket.SocketType:
    # connect and reset without yielding: the server accepts an already reset socket
    return blocking_connect(t.plain)


async def after_accept(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    await until_server_idle()
    return sock


async def mid_magic(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    await send(sock, b"RE")
    await until_server_idle()
    return sock


async def mid_link_message(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    _, first = link_bytes()
    await send(sock, first[:20])
    await until_server_idle()
    return sock


async def while_server_replies(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    _, first = link_bytes()
    await send(sock, first)
    return sock  # reset at once: the server's reply meets a reset


async def mid_ticket(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    machine, first = link_bytes()
    await send(sock, first)
    with trio.fail_after(10):
        reply: list[LinkReplyReceived] = []
        while not reply:
            evs = machine.feed(await sock.recv(4096))
            reply = [e for e in evs if isinstance(e, LinkReplyReceived)]
    await send(sock, reply[0].data[:70])
    await until_server_idle()
    return sock


async def tls_mid_handshake(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.tls)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = t.client_tls.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    await send(sock, hello[: len(hello) // 2])
    await until_server_idle()
    return sock


async def tls_after_hello(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.tls)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = t.client_tls.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    await send(sock, outgoing.read())
    await sock.recv(65536)  # the server's flight: it now waits for ours
    return sock


async def websocket_mid_upgrade(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    await send(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
    await until_server_idle()
    return sock


async def websocket_mid_frame(t: Target) -> trio.socket.SocketType:
    sock = await connected(t.plain)
    ws = WSConnection(ConnectionType.CLIENT)
    await send(sock, ws.send(Request(host="127.0.0.1", target="/", subprotocols=["binary"])))
    ws.receive_data(await sock.recv(65536))
    list(ws.events())
    _, first = link_bytes()
    frame = ws.send(BytesMessage(data=first))
    await send(sock, frame[: len(frame) - 10])
    await until_server_idle()
    return sock


async def main_mid_message(t: Target) -> trio.socket.SocketType:
    sock, _ = await linked_socket(t, ChannelType.MAIN)
    enc = MessageEncoder(True)
    await send(
        sock, enc.encode(MsgcMain.ATTACH_CHANNELS) + enc.header(MsgcMain.ATTACH_CHANNELS, 9)
    )
    await until_server_idle()
    return sock


async def vmc_mid_message(t: Target) -> trio.socket.SocketType:
    # the bystander's session, on a port channel of its own (port 0 is the bystander's)
    sock, _ = await linked_socket(t, ChannelType.PORT, t.session_id, cid=1)
    enc = MessageEncoder(True)
    await send(sock, enc.encode(MsgcVmc.DATA, b"x" * 100) + enc.header(MsgcVmc.DATA, 5000) + b"y")
    await until_server_idle()
    return sock


Case = Callable[[Target], Awaitable[trio.socket.SocketType]]
CASES: dict[str, Case] = {
    "before-accept": before_accept,
    "after-accept": after_accept,
    "mid-magic": mid_magic,
    "mid-link-message": mid_link_message,
    "while-server-replies": while_server_replies,
    "mid-ticket": mid_ticket,
    "tls-mid-handshake": tls_mid_handshake,
    "tls-after-hello": tls_after_hello,
    "websocket-mid-upgrade": websocket_mid_upgrade,
    "websocket-mid-frame": websocket_mid_frame,
    "main-mid-message": main_mid_message,
    "vmc-mid-message": vmc_mid_message,
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    d = tmp_path_factory.mktemp("pki")
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    server = server_tls_context(str(d / "cert.pem"), str(d / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.mark.parametrize("case", list(CASES))
async def test_reset_ends_only_that_connection(
    case: str, pki: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trivmc")
    cfg = ServerConfig(
        listen=[("127.0.0.1", 0)],
        tls_listen=[("127.0.0.1", 0)],
        tls=pki[0],
        key_pool_size=4,
        multi_session=True,
    )
    server = Server(cfg)
    server.add_port(ECHO, EchoBackend())
    server.add_port("org.trivmc.other.0", EchoBackend())
    async with server as addrs:
        plain = addrs[0][1]  # type: ignore[index]
        t = Target(server, plain, server.tls_addresses[0][1], pki[1])  # type: ignore[index]
        uri = f"spice://127.0.0.1:{plain}"
        async with connect(uri) as bystander:
            t.session_id = bystander.session_id
            ch = await bystander.open_port(ECHO)
            assert await echo(ch, b"before") == b"before"
            sock = await CASES[case](t)
            local = sock.getsockname()
            caplog.clear()
            reset(sock)
            await settle(lambda: server.pending_links == 0)
            await until_server_idle()
            assert await echo(ch, b"after" * 1000) == b"after" * 1000  # the bystander
        async with connect(uri) as fresh:  # and a fresh client
            ch2 = await fresh.open_port(ECHO)
            assert await echo(ch2, b"fresh") == b"fresh"
        peer = f"{local[0]}:{local[1]}"
        lines = [r for r in caplog.records if peer in r.getMessage()]
        assert len(lines) <= 1, [r.getMessage() for r in lines]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        for channel in server.channels.values():
            await settle(lambda c=channel: c.device.idle)  # type: ignore[misc]


async def test_before_accept_reset_is_the_errno_107_case(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection is reset while it waits in the accept queue; accept returns it
    and its peer name is gone (ENOTCONN): the server must take it in its stride."""
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    server.add_port(ECHO, EchoBackend())
    async with server as addrs:
        port = addrs[0][1]  # type: ignore[index]
        for _ in range(20):
            reset(blocking_connect(port))
        await settle(lambda: server.connections == 20 and server.pending_links == 0)
        async with connect(f"spice://127.0.0.1:{port}") as s:
            ch = await s.open_port(ECHO)
            assert await echo(ch, b"still here") == b"still here"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
