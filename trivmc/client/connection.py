"""One channel's connection to a SPICE server: the transport (`open_stream`), the link
(`link_channel`, retried on the other port as spice-gtk does) and the framed messages
over it (`MessageConnection`, which answers PING and the ACK window itself)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..protocol import (
    ClientLink,
    Linked,
    LinkError,
    LinkFailed,
    LinkReplyReceived,
    Message,
    MsgCommon,
    ProtocolError,
)
from ..protocol.channel import ChannelConnection, Role
from ..transport import client_tls_context
from ..transport.tls import subject_matches
from .address import Address
from .errors import SpiceLinkError

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
# a source server's MIGRATE_DATA carries its device's queue: trivmc's holds up to its
# byte budget (4 MiB) plus two messages (docs/migration.md), spice-server's is unbounded
MAX_MIGRATE_DATA = 64 * 1024 * 1024
RECEIVE_SIZE = 256 * 1024
_MIGRATION_MESSAGES = (MsgCommon.MIGRATE, MsgCommon.MIGRATE_DATA)


async def open_stream(
    address: Address, secure: bool = False, tls: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """Connect to `address`: its TLS port when `secure` (verified with `tls`, else the
    system's trust store), else its plain port; then the WebSocket upgrade if asked."""
    if address.path is not None:
        return await trio.open_unix_socket(address.path)
    assert address.host is not None
    port = address.tls_port if secure else address.port
    assert port is not None
    sock = await trio.open_tcp_stream(address.host, port)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    stream: trio.abc.Stream = sock
    try:
        if secure:
            stream = await _tls_handshake(sock, tls or client_tls_context(), address)
        if address.websocket:
            from ..transport.websocket import connect_websocket  # wsproto when used

            stream = await connect_websocket(stream, address.host, address.target)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _tls_handshake(
    sock: trio.SocketStream, ctx: ssl.SSLContext, address: Address
) -> trio.SSLStream[trio.SocketStream]:
    """TLS over `sock`, the chain verified by `ctx`, then the host name, or, for an
    address with a `cert_subject`, the certificate's subject instead (an OSError
    when it differs)."""
    by_subject = address.cert_subject is not None
    saved = ctx.check_hostname
    ctx.check_hostname = saved and not by_subject  # (read once, by wrap_bio, here)
    try:
        stream = trio.SSLStream(sock, ctx, server_hostname=address.host, https_compatible=True)
    finally:
        ctx.check_hostname = saved
    await stream.do_handshake()
    if address.cert_subject is not None:
        der = stream.getpeercert(binary_form=True)
        if not der or not subject_matches(der, address.cert_subject):
            raise ssl.SSLCertVerificationError(
                f"the certificate's subject is not {address.cert_subject!r}"
            )
    return stream


@dataclass
class LinkedStream:
    """A linked channel connection: framing negotiated, peer caps known."""

    stream: trio.abc.Stream
    mini_header: bool
    peer_common_caps: tuple[int, ...]
    peer_channel_caps: tuple[int, ...]
    trailing: bytes
    secure: bool = False


async def link_channel(
    address: Address,
    connection_id: int,
    channel_type: int,
    channel_id: int,
    channel_caps: Sequence[int],
    password: str | None,
    tls: ssl.SSLContext | None = None,
) -> LinkedStream:
    """Connect and link one channel; raise SpiceLinkError on refusal.

    The plain port is tried first when there is one. As spice-gtk does, a channel
    refused with NEED_SECURED is linked again on the TLS port (when known), and one
    refused with NEED_UNSECURED on the plain port.
    """
    secure = address.port is None and address.path is None
    args = (connection_id, channel_type, channel_id, channel_caps, password, tls)
    try:
        return await _link_once(address, secure, *args)
    except SpiceLinkError as e:
        if e.code == LinkError.NEED_SECURED and not secure and address.tls_port is not None:
            log.info("channel %d:%d must be secure: linking on the TLS port", *args[1:3])
            return await _link_once(address, True, *args)
        if e.code == LinkError.NEED_UNSECURED and secure and address.port is not None:
            log.info("channel %d:%d must be plain: linking on the plain port", *args[1:3])
            return await _link_once(address, False, *args)
        raise


async def _link_once(
    address: Address,
    secure: bool,
    connection_id: int,
    channel_type: int,
    channel_id: int,
    channel_caps: Sequence[int],
    password: str | None,
    tls: ssl.SSLContext | None,
) -> LinkedStream:
    stream = await open_stream(address, secure, tls)
    try:
        machine = ClientLink(connection_id, channel_type, channel_id, channel_caps, password)
        await stream.send_all(machine.initiate())
        while True:
            data = await stream.receive_some(4096)
            if not data:
                raise SpiceLinkError(
                    LinkError.ERROR,
                    f"server closed the connection during the link of {channel_type}:{channel_id}",
                )
            for ev in machine.feed(data):
                if isinstance(ev, LinkFailed):
                    raise SpiceLinkError(ev.code, f"link refused: {ev.code.name} ({ev.reason})")
                if isinstance(ev, LinkReplyReceived):
                    await stream.send_all(ev.data)
                if isinstance(ev, Linked):
                    return LinkedStream(
                        stream,
                        ev.mini_header,
                        ev.peer_common_caps,
                        ev.peer_channel_caps,
                        machine.trailing,
                        secure,
                    )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


class MessageConnection:
    """Framed messages over a linked stream: a trio driver of the sans-IO
    `ChannelConnection` (client side), which answers PING and SET_ACK and keeps the ACK
    window; what it decides to send is written before `receive` goes on."""

    def __init__(self, linked: LinkedStream, max_message: int = MAX_MESSAGE) -> None:
        self.stream = linked.stream
        self.conn = ChannelConnection(
            Role.CLIENT, mini_header=linked.mini_header, max_message=max_message
        )
        self.encoder = self.conn.encoder
        self.decoder = self.conn.decoder
        limit = max(max_message, MAX_MIGRATE_DATA)
        self.decoder.size_limit = lambda t: limit if t == MsgCommon.MIGRATE_DATA else max_message
        self._pending: deque[Message] = deque(self.decoder.feed(linked.trailing))
        self._send_lock = trio.Lock()

    @property
    def send_lock(self) -> trio.Lock:
        """Held while a send is under way; FIFO, so taking it waits for earlier sends."""
        return self._send_lock

    async def send(self, mtype: int, body: bytes = b"") -> None:
        async with self._send_lock:
            await self.stream.send_all(self.encoder.encode(mtype, body))

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> Message | None:
        """The next message of the channel's own (None at EOF); the common ones are
        answered (PING, SET_ACK, the ACK window) or taken on the way, except MIGRATE and
        MIGRATE_DATA, which the channel's migration handles."""
        while True:
            while self._pending:
                msg = self._pending.popleft()
                event = self.conn.handle(msg)
                if self.conn.has_data_to_send:
                    await self.send_raw(self.conn.data_to_send())
                if msg.type in _MIGRATION_MESSAGES:
                    return msg
                if isinstance(event, Message):
                    return event
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                if self.decoder.pending:
                    raise ProtocolError("server closed in the middle of a message")
                return None
            self._pending.extend(self.decoder.feed(data))
