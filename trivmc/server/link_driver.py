"""The link handshake driver: runs the sans-IO `ServerLink` machine over one
connection's stream until the link is accepted or refused.

The decisions are elsewhere: what may link (`link_policy.py`), the RSA key of the link
(`keys.py`: a fresh one while a password is set, else the shared one), the ticket
(`verify_ticket` against the password and expiry read when the ticket arrives: they
may change at run time), and the session a channel joins (`session.py`). A refused
link gets its error code on the wire and one log line, and is counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import trio

from ..protocol import (
    ChannelType,
    LinkError,
    LinkFailed,
    LinkMess,
    LinkRequest,
    ServerLink,
    TicketReceived,
    verify_ticket,
)
from ..protocol.ticket import LinkKey
from .keys import KeyMaker
from .link_policy import LinkPolicy, Via
from .session import ServerSession, SessionTable

# a link's log lines are the server's, as they were before this module
log = logging.getLogger("trivmc.server.server")

LINK_RECEIVE = 4096


class TicketRules(Protocol):
    """Where a link reads the ticket rules, each time it needs them."""

    @property
    def password(self) -> bytes | None: ...

    @property
    def ticket_expiry(self) -> float | None: ...


class LinkingConn(Via, Protocol):
    """The connection being linked: what it came over, and its name for the log."""

    @property
    def peer(self) -> str: ...


@dataclass
class LinkedConnection:
    """A link that got OK: its link message, the framing it chose, the bytes that
    followed it, and the session a VMC channel joins (None for main)."""

    mess: LinkMess
    mini_header: bool
    trailing: bytes
    session: ServerSession | None


class LinkDriver:
    """Links connections for one server; counts links refused (by the code sent) and
    accepted (by channel type)."""

    def __init__(
        self,
        policy: LinkPolicy,
        sessions: SessionTable,
        key_maker: KeyMaker,
        tickets: TicketRules,
    ) -> None:
        self.policy = policy
        self.sessions = sessions
        self.key_maker = key_maker
        self.tickets = tickets
        self.refused = 0
        self.refused_by: Counter[LinkError] = Counter()
        self.accepted: Counter[ChannelType] = Counter()

    def _refuse(self, peer: str, code: LinkError, why: str) -> None:
        self.refused += 1
        self.refused_by[code] += 1
        log.warning("%s: link refused (%s): %s", peer, code.name, why)

    async def link_key(self) -> LinkKey:
        """The RSA key of one link, taken once its link message is complete: a never-used
        one while a password is set, else the key password-less links share (`keys.py`).
        The password is read per link: it may be set or cleared at runtime."""
        return await self.key_maker.link_key(fresh=self.tickets.password is not None)

    async def link(
        self, stream: trio.abc.Stream, conn: LinkingConn, initial: bytes
    ) -> LinkedConnection | None:
        """Drive the link of `conn`, whose first bytes were `initial`; None when it was
        refused (answered and logged) or the peer closed during it."""
        peer = conn.peer
        machine = ServerLink()
        key: LinkKey | None = None
        mess: LinkMess | None = None
        data = initial
        while True:
            if not data:
                data = bytes(await stream.receive_some(LINK_RECEIVE))
                if not data:
                    log.info("%s: closed during the link", peer)
                    return None
            events = machine.feed(data)
            data = b""
            while events:
                ev = events.pop(0)
                if isinstance(ev, LinkFailed):
                    self._refuse(peer, ev.code, ev.reason)
                    if ev.data:
                        await stream.send_all(ev.data)
                    return None
                if isinstance(ev, LinkRequest):
                    mess = ev.mess
                    code, why = self.policy.check(mess, conn)
                    if code != LinkError.OK:
                        self._refuse(peer, code, why)
                        await stream.send_all(machine.refuse(code))
                        return None
                    key = await self.link_key()  # only for a complete, well-formed link
                    caps = self.policy.caps_for(mess, conn)
                    await stream.send_all(machine.accept(key.public_der, caps))
                    events += machine.feed(b"")  # events completed by bytes already buffered
                elif isinstance(ev, TicketReceived):
                    assert mess is not None and key is not None
                    code = verify_ticket(
                        key,
                        ev.ticket,
                        self.tickets.password,
                        expiry=self.tickets.ticket_expiry,
                        now=time.time(),
                    )
                    session: ServerSession | None = None
                    if code == LinkError.OK and mess.channel_type != ChannelType.MAIN:
                        session = self.sessions.get(mess.connection_id)
                        if session is None:
                            code = LinkError.BAD_CONNECTION_ID
                        elif self.policy.channel_status(mess, conn) != LinkError.OK:
                            code = LinkError.CHANNEL_NOT_AVAILABLE
                    elif code == LinkError.OK and self.sessions.leaving(mess.connection_id):
                        code = LinkError.BAD_CONNECTION_ID  # (session.py, `leaving`)
                    await stream.send_all(machine.result(code))
                    if code != LinkError.OK:
                        self._refuse(peer, code, f"channel {mess.channel_type}:{mess.channel_id}")
                        return None
                    self.accepted[ChannelType(mess.channel_type)] += 1
                    return LinkedConnection(mess, machine.mini_header, machine.trailing, session)
