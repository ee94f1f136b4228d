"""The client's side of a live migration: the destination's connections while a move is
under way (`Target`), and how they are made (`link_target`).

The session (session.py) reads the main channels and decides; this module holds what
the move needs between MIGRATE_BEGIN and the switch. docs/migration.md tells the whole
story: semi-seamless, seamless and SWITCH_HOST.
"""

from __future__ import annotations

import enum
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from ..protocol import (
    ChannelType,
    MainMigrateDstDoSeamless,
    MigrationDstInfo,
    MsgcMain,
    ProtocolError,
    VmcCap,
    has_cap,
)
from .address import Address
from .connection import MessageConnection, link_channel
from .errors import SpiceLinkError
from .stream import ChannelStream

log = logging.getLogger(__name__)

LINK_TIMEOUT = 30.0  # for the whole of linking to the destination


class MoveKind(enum.Enum):
    """How the session moved with its VM (`Session.last_migration`)."""

    SEMI_SEAMLESS = "semi-seamless"
    SEAMLESS = "seamless"
    SWITCH_HOST = "switch-host"


def destination(dst: MigrationDstInfo) -> Address:
    """Where MIGRATE_BEGIN or SWITCH_HOST sends the client (0 means no such port).
    Raises ValueError when it names no port at all."""
    port = dst.port or None
    tls_port = dst.sport or None
    if port is None and tls_port is None:
        raise ValueError(f"the destination {dst.host_text!r} has no port")
    subject = dst.cert_subject.decode(errors="replace") or None
    return Address(host=dst.host_text, port=port, tls_port=tls_port, cert_subject=subject)


@dataclass(eq=False)
class Target:
    """The destination's connections, made on MIGRATE_BEGIN(_SEAMLESS), until the switch
    (MIGRATE_END, or each channel's MIGRATE when seamless) or their end (CANCEL,
    SWITCH_HOST, a failure)."""

    address: Address
    seamless: bool  # asked for (BEGIN_SEAMLESS); `seamless_ok` is the destination's answer
    src_version: int = 0
    main: MessageConnection | None = None
    channels: dict[ChannelStream, tuple[MessageConnection, bool]] = field(default_factory=dict)
    seamless_ok: bool = False
    answered: trio.Event = field(default_factory=trio.Event)  # SEAMLESS_ACK or NACK came
    connected: bool = False  # MIGRATE_CONNECTED(_SEAMLESS) went to the source
    ending: bool = False  # MIGRATE_END went to the destination: MAIN_INIT next
    lost: bool = False  # the destination's main channel ended before the switch
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    waiting: set[ChannelStream] = field(default_factory=set)  # seamless: not moved yet

    async def aclose(self) -> None:
        """Stop linking and drop every destination connection (the move was cancelled,
        failed, or replaced)."""
        self.scope.cancel()
        await self.close_connections()

    async def close_connections(self, main: bool = True) -> None:
        """Close the channels' destination connections (and main's, with `main`)."""
        conns = [conn for conn, _ in self.channels.values()]
        if main and self.main is not None:
            conns.append(self.main)
        for ch in self.channels:
            if ch.migration_target is not None and ch.migration_target[0] in conns:
                ch.migration_target = None
        self.channels.clear()
        for conn in conns:
            await trio.aclose_forcefully(conn.stream)


async def link_target(
    target: Target,
    session_id: int,
    main_caps: list[int],
    channels: Iterable[ChannelStream],
    lz4: bool,
    password: str | None,
    tls: ssl.SSLContext | None,
    start_reader: Callable[[MessageConnection], Awaitable[None]],
) -> int:
    """Link main (with `session_id`), then every channel, to the destination, as
    spice-gtk does; when seamless, ask the destination first (MIGRATE_DST_DO_SEAMLESS)
    and wait for its answer, which `start_reader`'s task reports on `target`. Returns
    the reply for the source: MIGRATE_CONNECTED(_SEAMLESS) or MIGRATE_CONNECT_ERROR."""
    try:
        with trio.fail_after(LINK_TIMEOUT):
            args = (password, tls)
            linked = await link_channel(
                target.address, session_id, ChannelType.MAIN, 0, main_caps, *args
            )
            target.main = MessageConnection(linked, 1 << 20)
            await start_reader(target.main)
            if target.seamless:
                body = MainMigrateDstDoSeamless(target.src_version).encode()
                await target.main.send(MsgcMain.MIGRATE_DST_DO_SEAMLESS, body)
                await target.answered.wait()
                if target.lost:
                    raise trio.BrokenResourceError("the destination closed its main channel")
            caps = [VmcCap.DATA_COMPRESS_LZ4] if lz4 else []
            for ch in list(channels):
                linked = await link_channel(
                    target.address, session_id, ch.channel_type, ch.channel_id, caps, *args
                )
                lz4_out = lz4 and has_cap(linked.peer_channel_caps, VmcCap.DATA_COMPRESS_LZ4)
                conn = MessageConnection(linked)
                target.channels[ch] = (conn, lz4_out)
                if target.seamless_ok:
                    ch.migration_target = (conn, lz4_out)
                    target.waiting.add(ch)
    except (OSError, SpiceLinkError, ProtocolError, trio.TooSlowError) as e:
        log.warning("migration: linking to %s failed: %s", target.address.host, e)
        await target.close_connections()
        return MsgcMain.MIGRATE_CONNECT_ERROR
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        log.warning("migration: the destination hung up: %s", e)
        await target.close_connections()
        return MsgcMain.MIGRATE_CONNECT_ERROR
    target.connected = True
    if target.seamless_ok:
        return MsgcMain.MIGRATE_CONNECTED_SEAMLESS
    return MsgcMain.MIGRATE_CONNECTED
