"""Sessions: one per main-channel link, identified by a random non-zero connection id,
or, for a migration target, by the id the server was told to expect
(`SessionTable.expect`; docs/migration.md)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator

import trio

log = logging.getLogger(__name__)

EXPECT_TTL = 60.0  # seconds an expected migration target's id waits for its main link


class ServerSession:
    """A client's session. Cancelling `scope` closes its main and every VMC channel.

    Guarantee: once `close()` ran, `alive` is False and no channel may join it.
    """

    def __init__(self, connection_id: int, migration_target: bool = False) -> None:
        self.connection_id = connection_id
        # a migration target: its VMC links wait (`resolved`) until the client's main
        # channel said how it moves: seamless (the first link of each VMC channel then
        # awaits MIGRATE_DATA) or semi-seamless (MIGRATE_END: ordinary links)
        self.migration_target = migration_target
        self.seamless = False
        self.resolved = trio.Event()
        if not migration_target:
            self.resolved.set()
        self._migrated_keys: set[tuple[int, int]] = set()
        self.scope = trio.CancelScope()
        self.alive = True
        self.ended = trio.Event()  # set by close()
        self.channel_scopes: set[trio.CancelScope] = set()
        # tells the client of channels that appeared (MSG_MAIN_CHANNELS_LIST); set by
        # the main channel once it runs
        self.announce: Callable[[list[tuple[int, int]]], None] | None = None
        # told to migrate (monotonic deadline): a main link presenting this id is the
        # client looking for its destination, never a new session here (`leaving`)
        self.leaving_until = 0.0

    def join(self, scope: trio.CancelScope) -> None:
        """Tie a channel's cancel scope to this session's lifetime."""
        if not self.alive:
            scope.cancel()
        self.channel_scopes.add(scope)

    def leave(self, scope: trio.CancelScope) -> None:
        """Forget a channel's cancel scope (its link ended)."""
        self.channel_scopes.discard(scope)

    def resolve(self, seamless: bool) -> None:
        """The migration target's client said how it moves (main's DST_DO_SEAMLESS
        acknowledged, or MIGRATE_END): the VMC links held until now go on. Once."""
        if self.resolved.is_set():
            raise RuntimeError(f"session {self.connection_id:#010x}: already resolved")
        self.seamless = seamless
        self.resolved.set()

    def takes_migration_data(self, key: tuple[int, int]) -> bool:
        """True for the first link of channel `key` in a seamless migration target
        session (it carries the source's state); later links of it, and every link of
        a semi-seamless target, are ordinary ones."""
        if not self.seamless or key in self._migrated_keys:
            return False
        self._migrated_keys.add(key)
        return True

    def close(self) -> None:
        """Close the session: its main channel and every channel that joined it."""
        self.alive = False
        self.ended.set()
        self.scope.cancel()
        for scope in self.channel_scopes:
            scope.cancel()
        self.channel_scopes.clear()


class SessionTable:
    """Live sessions by connection id.

    Single-session mode (the default, as spice-server): a new main link replaces the
    older session, whose channels all close. Multi-session mode keeps them all.
    """

    def __init__(self, multi_session: bool) -> None:
        self.multi_session = multi_session
        self._sessions: dict[int, ServerSession] = {}
        self.created = 0  # sessions created so far
        # migration targets' ids, until their main links or their deadline (monotonic)
        self.expected: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[ServerSession]:
        """The live sessions (a snapshot: safe while sessions come and go)."""
        return iter([s for s in self._sessions.values() if s.alive])

    def get(self, connection_id: int) -> ServerSession | None:
        """The live session `connection_id` names, or None."""
        s = self._sessions.get(connection_id)
        return s if s is not None and s.alive else None

    def expect(self, connection_id: int, ttl: float = EXPECT_TTL) -> None:
        """A main link presenting `connection_id` (a non-zero u32) within `ttl`
        seconds is a migration target: its session keeps that id (once: the link
        consumes it). After `ttl` the id is an ordinary one again."""
        if not 0 < connection_id < 1 << 32:
            raise ValueError(f"a connection id is a non-zero u32, not {connection_id}")
        self.expected[connection_id] = time.monotonic() + ttl

    def leaving(self, connection_id: int) -> bool:
        """The live session `connection_id` was told to migrate less than EXPECT_TTL
        ago: a main link presenting its id went to this server by mistake (a handover
        that failed: the destination was this address) and must not replace it."""
        session = self.get(connection_id)
        return session is not None and session.leaving_until > time.monotonic()

    def create(self, connection_id: int = 0) -> ServerSession:
        """A new session (replacing others unless multi-session): a migration target
        with `connection_id` when that was expected (`expect`), else with a fresh
        random non-zero u32 id."""
        if not self.multi_session:
            for old in list(self._sessions.values()):
                log.info("session %#010x replaced by a new main link", old.connection_id)
                self.remove(old)
        now = time.monotonic()
        for cid, deadline in list(self.expected.items()):
            if deadline < now:
                log.info("session %#010x: no longer expected (no link in time)", cid)
                del self.expected[cid]
        target = connection_id in self.expected and connection_id not in self._sessions
        if target:
            del self.expected[connection_id]
            cid = connection_id
            log.info("session %#010x: a migration target", cid)
        while not target:
            cid = secrets.randbits(32)
            if cid and cid not in self._sessions and cid not in self.expected:
                break
        session = ServerSession(cid, migration_target=target)
        self._sessions[cid] = session
        self.created += 1
        return session

    def announce(self, keys: list[tuple[int, int]]) -> None:
        """Tell the client of every live session whose main channel runs that the
        channels `keys` are offered (CHANNELS_LIST with them alone)."""
        for session in self:
            if session.announce is not None:
                session.announce(keys)

    def remove(self, session: ServerSession) -> None:
        """Close `session` and forget it (idempotent)."""
        session.close()
        if self._sessions.get(session.connection_id) is session:
            del self._sessions[session.connection_id]
