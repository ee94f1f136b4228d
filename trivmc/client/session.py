"""A trio SPICE client for the VMC channels (usbredir, port, webdav) of any SPICE server.

    async with trivmc.client.connect("spice://127.0.0.1:5930", password="pw") as session:
        qmp = await session.open_port("org.qemu.monitor.qmp.0")
        await qmp.send_all(b'{"execute": "qmp_capabilities"}')
        print(await qmp.receive_some())

Closing the session closes every channel it opened.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import trio

from ..protocol import (
    AckSync,
    ChannelType,
    ClientLink,
    Linked,
    LinkError,
    LinkFailed,
    LinkReplyReceived,
    MainCap,
    MainChannelsList,
    MainInit,
    MainName,
    MainUuid,
    Message,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgcMain,
    MsgCommon,
    MsgMain,
    Ping,
    Pong,
    ProtocolError,
    SetAck,
    VmcCap,
    has_cap,
)
from ..transport import client_tls_context, connect_websocket
from .channel import VmcChannel

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
RECEIVE_SIZE = 256 * 1024


class SpiceLinkError(Exception):
    """The server refused a link; `code` is its SpiceLinkErr."""

    def __init__(self, code: LinkError, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Address:
    """Where a SPICE server listens: a plain TCP port and/or a TLS port on `host`, or a
    unix socket path. `websocket` carries SPICE in WebSocket messages (`ws://`,
    `wss://`), at `target` on the server."""

    host: str | None = None
    port: int | None = None
    path: str | None = None
    tls_port: int | None = None
    websocket: bool = False
    target: str = "/"

    @property
    def is_unix(self) -> bool:
        return self.path is not None


def _query_port(query: dict[str, list[str]], name: str, uri: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    if not values[0].isdigit() or not 0 < int(values[0]) < 65536:
        raise ValueError(f"bad {name} in {uri!r}")
    return int(values[0])


def parse_uri(uri: str, tls_port: int | None = None) -> Address:
    """spice://HOST:PORT, spice://HOST?port=PORT&tls-port=TLSPORT (spice-gtk's form),
    spice+tls://HOST:TLSPORT, spice+unix:///PATH, ws://HOST:PORT[/PATH] or
    wss://HOST:PORT[/PATH]. `tls_port` adds a TLS port to a spice:// URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "spice+unix":
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"no socket path in {uri!r}")
        return Address(path=path)
    host = parts.hostname or "127.0.0.1"
    if scheme in ("ws", "wss"):
        if parts.port is None:
            raise ValueError(f"no port in {uri!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if scheme == "wss":
            return Address(host=host, tls_port=parts.port, websocket=True, target=target)
        return Address(host=host, port=parts.port, websocket=True, target=target)
    if scheme == "spice+tls":
        if parts.port is None:
            raise ValueError(f"no port in {uri!r}")
        return Address(host=host, tls_port=parts.port)
    if scheme != "spice":
        raise ValueError(f"not a spice:// URI: {uri!r}")
    query = parse_qs(parts.query)
    port = parts.port or _query_port(query, "port", uri)
    tls_port = tls_port or _query_port(query, "tls-port", uri)
    if port is None and tls_port is None:
        raise ValueError(f"no port in {uri!r}")
    return Address(host=host, port=port, tls_port=tls_port)


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
            ctx = tls or client_tls_context()
            tls_stream = trio.SSLStream(
                sock, ctx, server_hostname=address.host, https_compatible=True
            )
            await tls_stream.do_handshake()
            stream = tls_stream
        if address.websocket:
            stream = await connect_websocket(stream, address.host, address.target)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
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
    """Framed messages over a linked stream, with the client side of ACK and PING."""

    def __init__(self, linked: LinkedStream, max_message: int = MAX_MESSAGE) -> None:
        self.stream = linked.stream
        self.encoder = MessageEncoder(linked.mini_header)
        self.decoder = MessageDecoder(linked.mini_header, max_message)
        self._pending: list[Message] = self.decoder.feed(linked.trailing)
        self._send_lock = trio.Lock()
        self._ack_window = 0
        self._ack_count = 0

    async def send(self, mtype: int, body: bytes = b"") -> None:
        async with self._send_lock:
            await self.stream.send_all(self.encoder.encode(mtype, body))

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> Message | None:
        """The next message not handled here (None at EOF). PING, SET_ACK and the ACK
        window are answered on the way."""
        while True:
            while self._pending:
                msg = self._pending.pop(0)
                if await self._common(msg):
                    continue
                return msg
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                if self.decoder.pending:
                    raise ProtocolError("server closed in the middle of a message")
                return None
            self._pending = self.decoder.feed(data)

    async def _common(self, msg: Message) -> bool:
        if self._ack_window:
            self._ack_count -= 1
            if self._ack_count <= 0:
                self._ack_count = self._ack_window
                await self.send(MsgcCommon.ACK)
        if msg.type == MsgCommon.PING:
            ping = Ping.decode(msg.body)
            await self.send(MsgcCommon.PONG, Pong(ping.id, ping.timestamp).encode())
            return True
        if msg.type == MsgCommon.SET_ACK:
            ack = SetAck.decode(msg.body)
            await self.send(MsgcCommon.ACK_SYNC, AckSync(ack.generation).encode())
            self._ack_window = self._ack_count = ack.window
            return True
        return msg.type in (MsgCommon.NOTIFY, MsgCommon.DISCONNECTING, MsgCommon.MIGRATE)


class Session:
    """A linked main channel and the VMC channels opened through it.

    `name` and `uuid` are the guest's, when the server sent them (MAIN_NAME and
    MAIN_UUID come right after MAIN_INIT, so they are set once `connect` returns)."""

    def __init__(
        self,
        address: Address,
        password: str | None,
        lz4: bool,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.password = password
        self.tls = tls
        self.lz4 = lz4 and not address.is_unix
        self.session_id = 0
        self.name: str | None = None
        self.uuid: UUID | None = None
        self.channels: list[tuple[int, int]] = []
        self.port_names: dict[int, str] = {}
        self.main: MessageConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._open: set[VmcChannel] = set()
        self._got_list = False
        self._channels_changed = trio.Event()
        self.closed = False

    async def _link_main(self) -> None:
        linked = await link_channel(
            self.address, 0, ChannelType.MAIN, 0, [MainCap.NAME_AND_UUID], self.password, self.tls
        )
        self.main = MessageConnection(linked, 1 << 20)
        try:
            with trio.fail_after(30):
                init = None
                while init is None:
                    msg = await self._main_message("MAIN_INIT")
                    if msg.type == MsgMain.INIT:
                        init = MainInit.decode(msg.body)
                self.session_id = init.session_id
                await self.main.send(MsgcMain.ATTACH_CHANNELS)
                while not self._got_list:
                    self._on_main(await self._main_message("CHANNELS_LIST"))
        except BaseException:
            await trio.aclose_forcefully(linked.stream)
            raise

    async def _main_message(self, waiting_for: str) -> Message:
        assert self.main is not None
        msg = await self.main.receive()
        if msg is None:
            raise ConnectionError(f"server closed the main channel before {waiting_for}")
        return msg

    def _on_main(self, msg: Message) -> None:
        if msg.type == MsgMain.CHANNELS_LIST:
            self._got_list = True
            for entry in MainChannelsList.decode(msg.body).channels:
                if entry not in self.channels:
                    self.channels.append(entry)
                if entry[0] == ChannelType.PORT:  # (re)announced: its name is asked again
                    self.port_names.pop(entry[1], None)
            self._channels_changed.set()
            self._channels_changed = trio.Event()
        elif msg.type == MsgMain.NAME:
            self.name = MainName.decode(msg.body).text
        elif msg.type == MsgMain.UUID:
            self.uuid = MainUuid.decode(msg.body).as_uuid()

    @property
    def channel_list(self) -> list[tuple[int, int]]:
        """The (type, id) of every channel the server has offered this session so far:
        the first CHANNELS_LIST and every channel announced since (SPICE has no message
        that withdraws one; a link to a channel gone since is refused)."""
        return list(self.channels)

    async def wait_channel(
        self, channel_type: int, channel_id: int | None = None
    ) -> tuple[int, int]:
        """Wait until the server offers a channel of `channel_type` (with `channel_id`,
        or any id) and return its (type, id). Raises ClosedResourceError if the session
        closes first."""
        while True:
            for entry in self.channels:
                if entry[0] == channel_type and channel_id in (None, entry[1]):
                    return entry
            if self.closed:
                raise trio.ClosedResourceError("the session closed")
            await self._channels_changed.wait()

    async def _main_loop(self) -> None:
        assert self.main is not None
        try:
            while True:
                msg = await self.main.receive()
                if msg is None:
                    log.info("server closed the main channel")
                    break
                self._on_main(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError) as e:
            log.info("main channel lost: %s", e)
        finally:
            self.closed = True
            self._channels_changed.set()
            for ch in list(self._open):
                ch.connection_lost("the session's main channel closed")

    def _has(self, channel_type: int, channel_id: int) -> bool:
        return (channel_type, channel_id) in self.channels

    async def open_channel(self, channel_type: int, channel_id: int) -> VmcChannel:
        """Link a VMC channel of this session and return it as a trio stream."""
        if self._nursery is None or self.closed:
            raise trio.ClosedResourceError("the session is closed")
        if not self._has(channel_type, channel_id):
            raise LookupError(f"the server lists no channel {channel_type}:{channel_id}")
        caps = [VmcCap.DATA_COMPRESS_LZ4] if self.lz4 else []
        linked = await link_channel(
            self.address, self.session_id, channel_type, channel_id, caps, self.password, self.tls
        )
        lz4_out = self.lz4 and has_cap(linked.peer_channel_caps, VmcCap.DATA_COMPRESS_LZ4)
        channel = VmcChannel(
            MessageConnection(linked),
            channel_type,
            channel_id,
            lz4_out=lz4_out,
            is_unix=self.address.is_unix,
            on_close=self._open.discard,
        )
        self._open.add(channel)
        await self._nursery.start(channel.run)
        return channel

    async def open_usbredir(self, channel_id: int = 0) -> VmcChannel:
        return await self.open_channel(ChannelType.USBREDIR, channel_id)

    async def open_webdav(self) -> VmcChannel:
        return await self.open_channel(ChannelType.WEBDAV, 0)

    async def open_port(self, name: str) -> VmcChannel:
        """Open the port channel whose PORT_INIT carries `name`: one known to carry it
        first, then those whose name is not known yet, in id order. A non-matching one
        is closed again; one the server closes before PORT_INIT (another session's
        client holds it) or refuses (removed since it was listed) is skipped."""
        ports = sorted(cid for t, cid in self.channels if t == ChannelType.PORT)
        known = [cid for cid in ports if self.port_names.get(cid) == name]
        ids = known + [cid for cid in ports if cid not in self.port_names]
        busy = 0
        for cid in ids:
            try:
                channel = await self.open_channel(ChannelType.PORT, cid)
            except SpiceLinkError as e:
                if e.code != LinkError.CHANNEL_NOT_AVAILABLE:
                    raise
                self.port_names.pop(cid, None)  # gone: asked again if it comes back
                continue
            try:
                with trio.fail_after(30):
                    port_name = await channel.wait_port_init()
            except trio.BrokenResourceError:
                busy += 1  # closed at once: the port has another client
                await channel.aclose()
                continue
            self.port_names[cid] = port_name
            if port_name == name:
                return channel
            await channel.aclose()
        why = f" ({busy} port(s) busy with another client)" if busy else ""
        raise LookupError(f"no port channel named {name!r}{why}")

    async def aclose(self) -> None:
        """Close every channel and the main channel."""
        for ch in list(self._open):
            await ch.aclose()
        if self.main is not None:
            await trio.aclose_forcefully(self.main.stream)
        self.closed = True


def _single(exc: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one leaf of a group made of exactly one exception (nested or not)."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]  # type: ignore[assignment]
    return exc


@contextlib.asynccontextmanager
async def connect(
    uri: str,
    password: str | None = None,
    *,
    lz4: bool = True,
    tls_port: int | None = None,
    ca_file: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Session]:
    """Link the main channel of the server at `uri` (see `parse_uri`); yield the
    Session. On exit every channel it opened is closed. Raises SpiceLinkError when the
    server refuses. TLS verifies the server certificate and host name against
    `ca_file` (or the system's trust store); `tls` replaces that context entirely."""
    if tls is None and ca_file is not None:
        tls = client_tls_context(ca_file)
    session = Session(parse_uri(uri, tls_port), password, lz4, tls)
    await session._link_main()
    try:
        async with trio.open_nursery() as nursery:
            session._nursery = nursery
            nursery.start_soon(session._main_loop)
            try:
                yield session
            finally:
                await session.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaf = _single(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__  # keeps the cause, hides the group
