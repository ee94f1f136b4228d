"""Sessions: one per main-channel link, identified by a random non-zero connection id."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator

import trio

log = logging.getLogger(__name__)


class ServerSession:
    """A client's session. Cancelling `scope` closes its main and every VMC channel.

    Guarantee: once `close()` ran, `alive` is False and no channel may join it.
    """

    def __init__(self, connection_id: int) -> None:
        self.connection_id = connection_id
        self.scope = trio.CancelScope()
        self.alive = True
        self.channel_scopes: set[trio.CancelScope] = set()
        # tells the client of channels that appeared (MSG_MAIN_CHANNELS_LIST); set by
        # the main channel once it runs
        self.announce: Callable[[list[tuple[int, int]]], None] | None = None

    def join(self, scope: trio.CancelScope) -> None:
        """Tie a channel's cancel scope to this session's lifetime."""
        if not self.alive:
            scope.cancel()
        self.channel_scopes.add(scope)

    def leave(self, scope: trio.CancelScope) -> None:
        self.channel_scopes.discard(scope)

    def close(self) -> None:
        """Close the session: its main channel and every channel that joined it."""
        self.alive = False
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

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[ServerSession]:
        """The live sessions (a snapshot: safe while sessions come and go)."""
        return iter([s for s in self._sessions.values() if s.alive])

    def get(self, connection_id: int) -> ServerSession | None:
        s = self._sessions.get(connection_id)
        return s if s is not None and s.alive else None

    def create(self) -> ServerSession:
        """A new session with a fresh random non-zero u32 id (replacing others unless
        multi-session)."""
        if not self.multi_session:
            for old in list(self._sessions.values()):
                log.info("session %#010x replaced by a new main link", old.connection_id)
                self.remove(old)
        while True:
            cid = secrets.randbits(32)
            if cid and cid not in self._sessions:
                break
        session = ServerSession(cid)
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
