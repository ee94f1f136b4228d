"""VMC channels (spicevmc.cpp): usbredir, port and webdav, one client at a time.

`VmcChannel` owns the char device, the QEMU-style frontend and the backend for its
whole life; `VmcChannelClient` is the one linked client: DATA and COMPRESSED_DATA go
into write buffers (a token and budget room first, so a stalled device stops socket
reads), device data goes back as DATA or COMPRESSED_DATA by the LZ4 rules.

Between two clients lies a session boundary: the departed client's bytes get the drain
deadline to reach its backend peer, the rest is dropped (counted, logged), and the next
client is attached only after that, so no byte crosses from one session to another.

Migration (docs/migration.md, "The server side"): on a source, `VmcChannel.migrate_client()`
sends MIGRATE (flush and data transfer); at the client's flush mark every byte it sent is
in the device's queue, and what the device has not written goes to the client as
MIGRATE_DATA (SVMD), no longer the source's to write. A target client
(`migration_target`) takes MIGRATE_DATA before any DATA and restores those bytes at the
head of its device's queue.

A usbredir channel follows its guest side, as spice-server + QEMU do: it is offered
(`available`) only while the backend's far side is open; when that closes, the
attached client's channel is closed; when it opens again, `on_available` tells the
server, which announces the channel to every connected session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .._trio_util import AsyncBool, AsyncValue, wait_any
from ..backends import Backend
from ..backends.stream import DEFAULT_DRAIN
from ..chardev import DeviceSubtype, SpiceChardev
from ..chardev.device import BYTE_BUDGET
from ..chardev.interface import DeviceData
from ..chardev.migration import MigratableCharDevice
from ..protocol import (
    COMPRESSED_HEAD_SIZE,
    ChannelType,
    MsgcVmc,
    MsgVmc,
    PortEventMsg,
    PortInit,
    decompress_body,
    vmc_payload,
)
from ..protocol.messages import Body
from .channel import ChannelOptions, Traffic, UnknownMessage
from .vmc_migration import MigratingClient

log = logging.getLogger(__name__)

WEBDAV_PORT_NAME = "org.spice-space.webdav.0"


class VmcChannelClient(MigratingClient):
    """The client of one VMC channel; implements the char device's DeviceClient."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        *,
        channel: VmcChannel,
        peer_lz4: bool,
        migration_target: bool = False,
    ) -> None:
        super().__init__(stream, opts, channel=channel, migration_target=migration_target)
        self.channel = channel
        self.peer_lz4 = peer_lz4
        self.max_decompressed = self.decoder.max_size
        self.connection_id = 0  # its session's

    def push_device_data(self, data: DeviceData) -> int | None:
        """Queue device bytes as DATA or COMPRESSED_DATA (the LZ4 rules); return None,
        or the LZ4 block's size when compressed: the device counts them (stats.py)."""
        mtype, body = vmc_payload(data, self.peer_lz4, self.is_unix)
        self.send(mtype, body)
        if mtype == MsgVmc.COMPRESSED_DATA:
            return len(body) - COMPRESSED_HEAD_SIZE
        return None

    def handle_now(self, mtype: int, body: Body) -> bool:
        """DATA (and COMPRESSED_DATA, decompressed only when the device takes it now)
        for an idle device is written at once, with no token round trip; anything else
        takes `handle_message`. The device counts what it takes (stats.py)."""
        if not self._hot:
            return False
        device = self.channel.device
        if mtype == MsgcVmc.DATA:
            return device.try_write(body)
        if mtype == MsgcVmc.COMPRESSED_DATA and device.writes_now:
            return device.try_write(self._decompress(body), len(body) - COMPRESSED_HEAD_SIZE)
        return False

    def restored(self) -> None:
        if self.channel.client is self:  # (still this channel's client)
            self.channel.device.attach_client(self)

    def _decompress(self, body: Body) -> bytes:
        """The stated size is checked against the bound before anything is allocated."""
        return decompress_body(body, self.max_decompressed)

    async def handle_message(self, mtype: int, body: Body) -> None:
        device = self.channel.device
        if mtype == MsgcVmc.DATA:
            if not self.holding:
                with self.budget_wait():  # (MIGRATE going out ends the wait: held)
                    device.write_buffer_add(await device.get_write_buffer(body))
                    return
            await self._hold_for_migration(body)
        elif mtype == MsgcVmc.COMPRESSED_DATA:
            # room in the byte budget first, then the decompressed bytes (counted in it)
            block = len(body) - COMPRESSED_HEAD_SIZE
            if not self.holding:
                with self.budget_wait():
                    async with device.write_buffer(compressed_size=block) as buf:
                        buf.data = self._decompress(body)
                    return
            await self._hold_for_migration(self._decompress(body))
        elif mtype == MsgcVmc.PORT_EVENT:
            self.channel.chardev.event(PortEventMsg.decode(body).event)
        else:
            raise UnknownMessage(f"{self.name}: unknown message type {mtype}")


class VmcChannel:
    """One hosted VMC channel (type, id) with its device, frontend and backend."""

    def __init__(
        self,
        channel_type: ChannelType,
        channel_id: int,
        backend: Backend,
        port_name: str | None = None,
        *,
        byte_budget: int = BYTE_BUDGET,
    ) -> None:
        self.channel_type = channel_type
        self.channel_id = channel_id
        subtype = {
            ChannelType.USBREDIR: DeviceSubtype.USBREDIR,
            ChannelType.PORT: DeviceSubtype.PORT,
            ChannelType.WEBDAV: DeviceSubtype.WEBDAV,
        }[channel_type]
        if channel_type == ChannelType.WEBDAV and port_name is None:
            port_name = WEBDAV_PORT_NAME
        if channel_type == ChannelType.PORT and not port_name:
            raise ValueError("a port channel needs a name")
        self.backend = backend
        self.on_available: Callable[[VmcChannel], None] | None = None  # set by the server
        self.removed = False  # taken out of the server: never offered again
        self._linked = AsyncValue[VmcChannelClient | None](None)  # `client`
        self._attached: VmcChannelClient | None = None  # attached to the device
        self.clients_served = 0
        self.clients_refused = 0
        self.drain = float(getattr(backend, "drain", DEFAULT_DRAIN))
        self.bytes_dropped = 0  # a departed client's bytes not delivered by the deadline
        self.traffic = Traffic()  # of the clients that ended (`traffic_now`: all)
        self._session_over = AsyncBool(True)  # the last client's session boundary is done
        self._nursery: trio.Nursery | None = None
        # wired in one step: the frontend gets the channel's callbacks, the device
        # attaches itself to the frontend (its instance)
        self.chardev = SpiceChardev(
            backend,
            subtype,
            port_name,
            on_port_event=self._on_port_event,
            on_fe_open=self._on_fe_open,
        )
        self.device = MigratableCharDevice(self.chardev, byte_budget=byte_budget)

    @property
    def client(self) -> VmcChannelClient | None:
        """The linked client (maybe still waiting for the previous session's end)."""
        return self._linked.value

    @property
    def key(self) -> tuple[int, int]:
        """(channel type, channel id), the channel's key in the registry."""
        return (int(self.channel_type), self.channel_id)

    @property
    def label(self) -> str:
        """The channel's name in logs: `usbredir:0`, `port:1 (name)`, `webdav:0`."""
        name = self.channel_type.name.lower()
        return f"{name}:{self.channel_id}" + (
            f" ({self.chardev.port_name})" if self.channel_type == ChannelType.PORT else ""
        )

    @property
    def traffic_now(self) -> Traffic:
        """Wire bytes and messages of every client served, the linked one included."""
        return self.traffic.with_live([] if self.client is None else [self.client])

    @property
    def is_port(self) -> bool:
        """True for a port or webdav channel (PORT_INIT and PORT_EVENT apply)."""
        return self.channel_type in (ChannelType.PORT, ChannelType.WEBDAV)

    @property
    def available(self) -> bool:
        """Offered to clients: a port always; usbredir while its guest side is open."""
        if self.removed:
            return False
        return self.channel_type != ChannelType.USBREDIR or self.chardev.fe_open

    def _on_port_event(self, event: int) -> None:
        if self._attached is not None and self.is_port:
            self._attached.send(MsgVmc.PORT_EVENT, PortEventMsg(event).encode())

    def _on_fe_open(self, is_open: bool) -> None:
        """usbredir's guest side opened (register: announce) or closed (unregister: the
        client's channel is closed, as spice-server's channel destroy does)."""
        if is_open:
            log.info("%s: guest side open: channel offered", self.label)
            if self.on_available is not None and not self.removed:
                self.on_available(self)
        else:
            log.info("%s: guest side closed: channel withdrawn", self.label)
            self.disconnect_client()

    async def run(self) -> None:
        """Run the char device and the backend until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.device.run)
                nursery.start_soon(self.backend.run, self.chardev)
        finally:
            self._nursery = None
            self._session_over.value = True

    def _begin_boundary(self) -> None:
        """The attached client left: end its session before the next client starts
        (one boundary at a time: the next client waits for this one)."""
        self._session_over.value = False
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._end_session)
                return
            except RuntimeError:  # closed: run() is ending (the channel is being stopped)
                pass
        # not running: nothing can be delivered any more
        self.bytes_dropped += self.device.reset()
        self._session_over.value = True

    async def _queue_delivered_or_undeliverable(self) -> None:
        """Return once the device's queue is empty, or once the backend says no peer
        can take it any more (waiting for the deadline then would only hold up the
        next client)."""
        undeliverable = getattr(self.backend, "wait_undeliverable", None)
        if undeliverable is None:
            await self.device.wait_queue_empty()
        else:
            await wait_any(self.device.wait_queue_empty, undeliverable)

    async def _end_session(self) -> None:
        """The session boundary: what the departed client sent gets until the drain
        deadline to reach its backend peer (the device's queue, then the backend's
        own buffer); the rest is dropped and counted, never given to another peer.
        The next client is attached only after this."""
        try:
            deadline = trio.current_time() + self.drain
            with trio.move_on_at(deadline):
                await self._queue_delivered_or_undeliverable()
            dropped = self.device.reset()
            end_session = getattr(self.backend, "end_session", None)
            if end_session is not None:
                dropped += await end_session(deadline)
            if dropped:
                self.bytes_dropped += dropped
                log.warning(
                    "%s: %d bytes from the client that left were not delivered within"
                    " %.1f s: dropped at the session boundary",
                    self.label,
                    dropped,
                    self.drain,
                )
        finally:
            self._session_over.value = True

    async def wait_no_client(self) -> None:
        """Return once no client is linked to this channel."""
        await self._linked.wait_value(None)

    def migrate_client(self) -> VmcChannelClient | None:
        """Start migrating the attached client (`start_migration`); None without one."""
        client = self._attached
        if client is not None:
            client.start_migration()
        return client

    def disconnect_client(self) -> None:
        """Disconnect the current client, if any (its `run()` returns)."""
        if self.client is not None:
            self.client.disconnect()

    async def serve_client(self, client: VmcChannelClient, initial: bytes) -> None:
        """Serve `client` as this channel's one client, or refuse it when busy (the link
        result was already OK: spice-server then just closes)."""
        if self.client is not None:
            self.clients_refused += 1
            log.warning("%s: refusing a second client (the first keeps the channel)", self.label)
            return
        self._linked.value = client
        self.clients_served += 1
        try:
            await self._session_over.wait_value(True)  # the previous client's boundary
            if not self.available:
                log.info("%s: closing a client: the channel is not offered now", self.label)
                return
            if self.is_port:
                name = (self.chardev.port_name or "").encode()
                client.send(MsgVmc.PORT_INIT, PortInit(name, self.chardev.fe_open).encode())
            self._attached = client
            if not client.migration_target:  # (a target's: at MIGRATE_DATA)
                self.device.attach_client(client)
            await client.run(initial)
        finally:
            try:
                if self._attached is client:
                    self._attached = None
                    self.device.remove_client(client)
                    self._begin_boundary()
            finally:  # the channel is free again whatever happened above
                self.traffic.add(client)
                self._linked.value = None
