"""What a link that got OK becomes: a main channel, which creates its session, or a
VMC channel, which joins its session and serves the channel's client.

Each linked channel is listed for `query-spice` and announced (SPICE_INITIALIZED)
before it runs; `run` returns when the channel's connection ends, and the session a
main channel created is closed with it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import trio

from ..protocol import ChannelType, LinkMess
from .channel import ChannelOptions, Traffic
from .config import ServerConfig
from .connection import ConnInfo
from .events import EventHub, LinkedChannel
from .link_driver import LinkedConnection
from .link_policy import LinkPolicy
from .main_channel import MainChannelClient, MigrationOutcome
from .registry import ChannelRegistry
from .session import ServerSession, SessionTable
from .vmc import VmcChannel, VmcChannelClient

# a channel's log lines are the server's, as they were before this module
log = logging.getLogger("trivmc.server.server")


class ChannelRunner:
    """Runs the linked channels of one server; keeps its live main channels
    (`main_clients`) and the traffic of those that ended (`main_traffic`). `auth()` is
    QEMU's name of the link policy now (for SPICE_INITIALIZED)."""

    def __init__(
        self,
        config: ServerConfig,
        registry: ChannelRegistry,
        sessions: SessionTable,
        policy: LinkPolicy,
        events: EventHub,
        auth: Callable[[], str],
    ) -> None:
        self.config = config
        self.registry = registry
        self.sessions = sessions
        self.policy = policy
        self.events = events
        self.auth = auth
        self.main_traffic = Traffic()  # of the main channels that ended
        self.main_clients: set[MainChannelClient] = set()  # the live ones
        # sessions moved here (a target's main took MIGRATE_DATA or MIGRATE_END) and
        # moved away (`Server.migrate_sessions`), by how
        self.migrations_in: Counter[MigrationOutcome] = Counter()
        self.migrations_out: Counter[MigrationOutcome] = Counter()

    async def run(self, stream: trio.abc.Stream, linked: LinkedConnection, conn: ConnInfo) -> None:
        """Serve the linked channel; `conn.peer` names it from now on (the connection's
        last log line, written by the caller, says how it ended)."""
        mess = linked.mess
        main = mess.channel_type == ChannelType.MAIN
        key = (mess.channel_type, mess.channel_id)
        channel = None if main else self.registry.channels.get(key)
        if not main and channel is None:
            log.info("%s: the channel was removed during the link", conn.peer)
            return
        opts = ChannelOptions(
            name=f"{conn.peer} {'main' if channel is None else channel.label}",
            mini_header=linked.mini_header,
            max_message=self.config.max_main_message if main else self.config.max_vmc_message,
            is_unix=conn.is_unix,
            ping_interval=self.config.ping_interval,
            ping_misses=self.config.ping_misses,
            max_queued=self.config.max_main_queue if main else self.config.max_vmc_queue,
        )
        conn.peer = opts.name
        if channel is None:
            await self._run_main(stream, opts, linked, conn)
        else:
            assert linked.session is not None
            await self._run_vmc(stream, opts, linked, conn, channel, linked.session)

    def _initialized(self, conn: ConnInfo, connection_id: int, mess: LinkMess) -> None:
        """A channel linked: list it (query-spice) and emit SPICE_INITIALIZED."""
        entry = LinkedChannel(
            conn.client_info or {}, connection_id, mess.channel_type, mess.channel_id, conn.secure
        )
        self.events.linked[conn.serial] = entry
        server = {**(conn.server_info or {}), "auth": self.auth()}
        self.events.emit("SPICE_INITIALIZED", {"server": server, "client": entry.info()})

    async def _run_main(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        linked: LinkedConnection,
        conn: ConnInfo,
    ) -> None:
        session = self.sessions.create(linked.mess.connection_id)
        self._initialized(conn, session.connection_id, linked.mess)
        offered = self.policy.offered_to(conn)
        client = MainChannelClient(
            stream,
            opts,
            session_id=session.connection_id,
            channels=lambda: [key for key in self.registry.offered() if offered(key)],
            offered=offered,
            client_caps=linked.mess.channel_caps,
            name=self.config.name,
            uuid=self.config.uuid,
            session=session,
            on_migrated_in=self._migrated_in,
        )
        conn.peer += f" (session {session.connection_id:#010x})"
        log.info("%s: linked", conn.peer)
        session.announce = client.announce
        self.main_clients.add(client)
        try:
            with session.scope:
                await client.run(linked.trailing)
        finally:
            self.main_clients.discard(client)
            self.main_traffic.add(client)
            session.announce = None
            self.sessions.remove(session)

    def _migrated_in(self, outcome: MigrationOutcome) -> None:
        self.migrations_in[outcome] += 1

    async def _run_vmc(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        linked: LinkedConnection,
        conn: ConnInfo,
        channel: VmcChannel,
        session: ServerSession,
    ) -> None:
        lz4 = self.policy.client_lz4(linked.mess, conn)
        with trio.CancelScope() as scope:
            session.join(scope)
            try:
                if not session.resolved.is_set():
                    # spice-server's pending links of a migration target: held, unread,
                    # until main says seamless or semi-seamless (docs/migration.md)
                    log.info("%s: held until the client's migration path is known", conn.peer)
                    await session.resolved.wait()
                target = session.takes_migration_data(channel.key)
                client = VmcChannelClient(
                    stream, opts, channel=channel, peer_lz4=lz4, migration_target=target
                )
                client.connection_id = session.connection_id
                self._initialized(conn, session.connection_id, linked.mess)
                log.info(
                    "%s: linked (client lz4: %s)%s",
                    conn.peer,
                    "yes" if lz4 else "no",
                    " as a migration target" if target else "",
                )
                await channel.serve_client(client, linked.trailing)
            finally:
                session.leave(scope)
