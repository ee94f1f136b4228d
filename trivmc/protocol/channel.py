"""The rules every SPICE channel follows, on both sides, with no I/O (sans-IO).

`ChannelConnection` takes the messages a connection received, one at a time, and
returns what the channel itself must handle; the common messages it answers itself.
What it wants sent (SET_ACK, PING, PONG, ACK, ACK_SYNC) waits, framed, for
`data_to_send()`, so the driver writes it in order with its own messages.

- The server side (`Role.SERVER`) owns the ACK window (SET_ACK first, then at most
  twice the window of messages unacknowledged: `may_send` / `message_sent`), and PINGs
  with their PONGs (`ping`, `pings_unanswered`, `min_rtt`). Client messages above
  DISCONNECTING belong to the channel; unknown common ones are protocol errors, as
  spice-server treats them. Migration (`MigrationState`): after `migrate()` with
  NEED_FLUSH one MIGRATE_FLUSH_MARK is valid (`MigrateFlushMark`), and from then on
  the client sends none of the channel's messages; after `expect_migrate_data()` (a
  migration target) MIGRATE_DATA is valid (`MigrateDataReceived`) and must come before
  any of the channel's messages. Otherwise both are protocol errors.
- The client side (`Role.CLIENT`) answers PING with PONG and SET_ACK with ACK_SYNC, and
  sends an ACK after every `window` messages, as spice-gtk does. Server messages above
  BASE_LAST belong to the channel; the other common ones are taken here.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .constants import MigrateFlags, MsgcCommon, MsgCommon
from .errors import ProtocolError
from .framing import Message, MessageDecoder, MessageEncoder
from .message_base import Body
from .messages import AckSync, Migrate, Ping, Pong, SetAck

log = logging.getLogger(__name__)

OUTSTANDING_PINGS = 8  # PINGs remembered for matching late PONGs
FIRST_CHANNEL_MESSAGE = 101  # SPICE_MSG_BASE_LAST / SPICE_MSGC_BASE_LAST + 1


class Role(enum.Enum):
    """Which side of a channel a `ChannelConnection` plays."""

    SERVER = "server"
    CLIENT = "client"


class MigrationState(enum.Enum):
    """Where a server-side channel connection is in a migration."""

    NONE = "no migration: MIGRATE_FLUSH_MARK and MIGRATE_DATA are protocol errors"
    FLUSH_AWAITED = "MIGRATE with NEED_FLUSH sent: the client's flush mark is awaited"
    FLUSHED = "the flush mark came: the client sends no channel message any more"
    DATA_AWAITED = "a migration target: MIGRATE_DATA must come first"


class UnknownMessage(ProtocolError):
    """A message type this channel does not handle (spice-server closes the channel)."""


@dataclass(frozen=True)
class WindowOpened:
    """An ACK for the current generation: `ChannelConnection.may_send` may have
    become true."""


@dataclass(frozen=True)
class PeerDisconnecting:
    """The peer said it is disconnecting (it closes the connection next)."""


@dataclass(frozen=True)
class MigrateFlushMark:
    """The client's MIGRATE_FLUSH_MARK: everything it sent before is in."""


@dataclass(frozen=True)
class MigrateDataReceived:
    """A migration target's MIGRATE_DATA: `body` is the source's migration data."""

    body: Body


#: What `ChannelConnection` reports besides messages.
ChannelEvent = WindowOpened | PeerDisconnecting | MigrateFlushMark | MigrateDataReceived

WINDOW_OPENED = WindowOpened()
PEER_DISCONNECTING = PeerDisconnecting()
MIGRATE_FLUSH_MARK = MigrateFlushMark()


class ChannelConnection:
    """One channel connection's common protocol state; owns no socket.

    Guarantees: `handle` never blocks and never sends by itself; everything it wants
    sent is in `data_to_send()`, framed, in the order it was decided; `pings_unanswered`
    counts the PINGs sent since the last PONG that matched one of the last
    `OUTSTANDING_PINGS`; the ACK window never lets more than twice `ack_window`
    messages go unacknowledged once `start()` was called.
    """

    def __init__(
        self,
        role: Role,
        *,
        mini_header: bool,
        max_message: int,
        ack_window: int | None = None,
        name: str = "channel",
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.role = role
        self.name = name
        self.encoder = MessageEncoder(mini_header)
        self.decoder = MessageDecoder(mini_header, max_message)
        self._clock = clock
        self._out = bytearray()
        # the server's window: SET_ACK generation, the client's last ACK_SYNC, and
        # the messages sent since the last ACK (SET_ACK included)
        self.ack_window = ack_window if role is Role.SERVER else None
        self.ack_generation = 0
        self.peer_generation = 0xFFFFFFFF
        self.unacked = 0
        # the client's window: the server's SET_ACK window and messages left to an ACK
        self.peer_window = 0
        self._until_ack = 0
        # pings (server): id -> timestamp in ns, oldest first
        self._ping_id = 0
        self._ping_sent: dict[int, int] = {}
        self.pings_unanswered = 0
        self.min_rtt: float | None = None
        self.migration = MigrationState.NONE

    # ---- out -------------------------------------------------------------------

    def _queue(self, mtype: int, body: bytes = b"") -> None:
        self.encoder.encode_into(self._out, mtype, body)

    def data_to_send(self) -> bytes:
        """The framed messages the connection decided to send since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def has_data_to_send(self) -> bool:
        """True while encoded bytes wait for `data_to_send`."""
        return bool(self._out)

    def start(self) -> None:
        """The server's first words: SET_ACK when there is a window. It goes through
        `may_send` / `message_sent` like every message: spice-server counts it too."""
        if self.ack_window is not None:
            self.ack_generation += 1
            self.unacked = 0
            self._queue(MsgCommon.SET_ACK, SetAck(self.ack_generation, self.ack_window).encode())

    @property
    def may_send(self) -> bool:
        """The window lets one more message go (always true without a window)."""
        return self.ack_window is None or self.unacked <= 2 * self.ack_window

    def message_sent(self) -> None:
        """One message of the channel's went to the peer (counted in the window)."""
        if self.ack_window is not None:
            self.unacked += 1

    def ping(self) -> None:
        """Queue a PING; its PONG (even a late one) updates `min_rtt` and shows the
        peer is alive."""
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        ts = self._clock()
        self._ping_sent[self._ping_id] = ts
        while len(self._ping_sent) > OUTSTANDING_PINGS:
            del self._ping_sent[next(iter(self._ping_sent))]
        self.pings_unanswered += 1
        self._queue(MsgCommon.PING, Ping(self._ping_id, ts).encode())

    def migrate(self, flags: int) -> None:
        """Queue MIGRATE(`flags`) (server side); with NEED_FLUSH the client's flush
        mark is awaited from now on. RuntimeError when a migration is under way."""
        if self.role is not Role.SERVER or self.migration is not MigrationState.NONE:
            raise RuntimeError(f"{self.name}: MIGRATE now ({self.migration.name})")
        self._queue(MsgCommon.MIGRATE, Migrate(flags).encode())
        if flags & MigrateFlags.NEED_FLUSH:
            self.migration = MigrationState.FLUSH_AWAITED

    def expect_migrate_data(self, max_size: int | None = None) -> None:
        """This connection is a migration target (server side): MIGRATE_DATA must come
        before any of the channel's messages; with `max_size`, its bound until it came
        (the others keep `max_message`). Call it before the first `handle`."""
        if self.role is not Role.SERVER or self.migration is not MigrationState.NONE:
            raise RuntimeError(f"{self.name}: cannot await MIGRATE_DATA now")
        self.migration = MigrationState.DATA_AWAITED
        if max_size is not None:
            other = self.decoder.max_size
            self.decoder.size_limit = lambda t: max_size if t == MsgcCommon.MIGRATE_DATA else other

    # ---- in --------------------------------------------------------------------

    def handle(self, msg: Message) -> Message | ChannelEvent | None:
        """Apply the common rules to one received message: the message itself when it
        is the channel's, an event, or None when nothing is left to do. Raises
        `ProtocolError` on a message no channel may send here."""
        if self.role is Role.SERVER:
            return self._server_handle(msg)
        return self._client_handle(msg)

    def _server_handle(self, msg: Message) -> Message | ChannelEvent | None:
        mtype = msg.type
        if mtype > MsgcCommon.DISCONNECTING:
            state = self.migration
            if state is MigrationState.NONE or state is MigrationState.FLUSH_AWAITED:
                return msg
            if state is MigrationState.FLUSHED:
                raise ProtocolError(f"{self.name}: channel message {mtype} after the flush mark")
            raise ProtocolError(
                f"{self.name}: channel message {mtype} before MIGRATE_DATA (a migration target)"
            )
        if mtype == MsgcCommon.PONG:
            self._on_pong(Pong.decode(msg.body))
        elif mtype == MsgcCommon.ACK_SYNC:
            self.peer_generation = AckSync.decode(msg.body).generation
        elif mtype == MsgcCommon.ACK:
            if self.ack_window is not None and self.peer_generation == self.ack_generation:
                self.unacked -= self.ack_window
                return WINDOW_OPENED
        elif mtype == MsgcCommon.DISCONNECTING:
            return PEER_DISCONNECTING
        elif mtype == MsgcCommon.MIGRATE_FLUSH_MARK:
            if self.migration is not MigrationState.FLUSH_AWAITED:
                raise self._unexpected("MIGRATE_FLUSH_MARK")
            self.migration = MigrationState.FLUSHED
            return MIGRATE_FLUSH_MARK
        elif mtype == MsgcCommon.MIGRATE_DATA:
            if self.migration is not MigrationState.DATA_AWAITED:
                raise self._unexpected("MIGRATE_DATA")
            self.migration = MigrationState.NONE
            self.decoder.size_limit = None
            return MigrateDataReceived(msg.body)
        else:
            raise UnknownMessage(f"{self.name}: unknown message type {mtype}")
        return None

    def _unexpected(self, what: str) -> ProtocolError:
        if self.migration is MigrationState.NONE:
            return ProtocolError(f"{self.name}: migration message {what} without migration")
        return ProtocolError(f"{self.name}: {what} unexpected: {self.migration.value}")

    def _on_pong(self, pong: Pong) -> None:
        sent = self._ping_sent.get(pong.id)
        if sent is None or sent != pong.timestamp:
            return  # not ours: ignored
        for pid in list(self._ping_sent):  # this PING and the ones before it are done
            del self._ping_sent[pid]
            if pid == pong.id:
                break
        self.pings_unanswered = 0
        rtt = (self._clock() - sent) / 1e9
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt

    def _client_handle(self, msg: Message) -> Message | ChannelEvent | None:
        if self.peer_window:
            self._until_ack -= 1
            if self._until_ack <= 0:
                self._until_ack = self.peer_window
                self._queue(MsgcCommon.ACK)
        mtype = msg.type
        if mtype >= FIRST_CHANNEL_MESSAGE:
            return msg
        if mtype == MsgCommon.PING:
            ping = Ping.decode(msg.body)
            self._queue(MsgcCommon.PONG, Pong(ping.id, ping.timestamp).encode())
        elif mtype == MsgCommon.SET_ACK:
            ack = SetAck.decode(msg.body)
            self._queue(MsgcCommon.ACK_SYNC, AckSync(ack.generation).encode())
            self.peer_window = self._until_ack = ack.window
        elif mtype == MsgCommon.DISCONNECTING:
            return PEER_DISCONNECTING
        else:  # NOTIFY, MIGRATE, WAIT_FOR_CHANNELS, LIST...: nothing to do here
            log.debug("%s: common message %d taken", self.name, mtype)
        return None
