"""The main channel client: MAIN_INIT (then MAIN_NAME and MAIN_UUID when set and the
client has NAME_AND_UUID), then CHANNELS_LIST on ATTACH_CHANNELS, and a CHANNELS_LIST
of each channel that appears later (spice-server's registered-new-channel).

Migration (docs/migration.md, "The main channel"), as spice-server's main channel:

- source: `begin_migration` (MIGRATE_BEGIN_SEAMLESS or MIGRATE_BEGIN, by the client's
  caps), the client's MIGRATE_CONNECTED(_SEAMLESS) / MIGRATE_CONNECT_ERROR
  (`wait_migration_connected`), then `complete_migration` (MIGRATE on main, the flush
  mark, MIGRATE_DATA; or MIGRATE_END; or MIGRATE_SWITCH_HOST) or `cancel_migration`;
- target (the session is a migration target): no MAIN_INIT; MIGRATE_DST_DO_SEAMLESS is
  answered ACK (then main MIGRATE_DATA is awaited) or NACK; MIGRATE_END (semi-seamless)
  is answered with MAIN_INIT.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import trio

from ..protocol import (
    MAIN_MIGRATE_DATA_MAX,
    MainCap,
    MainChannelsList,
    MainInit,
    MainMigrateBegin,
    MainMigrateBeginSeamless,
    MainMigrateData,
    MainMigrateDstDoSeamless,
    MainMigrateSwitchHost,
    MigrateFlags,
    MigrationDstInfo,
    MsgcMain,
    MsgCommon,
    MsgMain,
    has_cap,
    name_and_uuid,
)
from ..protocol.channel import MigrationState
from ..protocol.messages import Body
from .channel import ChannelClient, ChannelOptions, UnknownMessage
from .session import EXPECT_TTL, ServerSession

log = logging.getLogger(__name__)

MIGRATION_PROTOCOL_VERSION = 1  # SPICE_MIGRATION_PROTOCOL_VERSION

_CONNECTED = {
    MsgcMain.MIGRATE_CONNECTED: (True, False),
    MsgcMain.MIGRATE_CONNECTED_SEAMLESS: (True, True),
    MsgcMain.MIGRATE_CONNECT_ERROR: (False, False),
}
_HANDLED = {MsgcMain.ATTACH_CHANNELS, MsgcMain.MIGRATE_DST_DO_SEAMLESS, MsgcMain.MIGRATE_END}
# client main messages a VMC-only server accepts and ignores (agent, mouse, quality)
IGNORED = frozenset(m for m in MsgcMain if m not in _HANDLED and m not in _CONNECTED)


class MigrationOutcome(enum.Enum):
    """How a source's client answered `begin_migration`, and so how it moves."""

    SEAMLESS = "seamless"  # MIGRATE_CONNECTED_SEAMLESS: MIGRATE + MIGRATE_DATA
    SEMI_SEAMLESS = "semi-seamless"  # MIGRATE_CONNECTED: MIGRATE_END
    FAILED = "failed"  # MIGRATE_CONNECT_ERROR, or no answer in time: SWITCH_HOST
    NONE = "none"  # the client has no migration caps: nothing asked, SWITCH_HOST


class MainChannelClient(ChannelClient):
    """Sends MAIN_INIT with the session id, then the guest's name and UUID to a client
    that has NAME_AND_UUID (`client_caps`: its main channel capability words); answers
    ATTACH_CHANNELS with every hosted channel. Never claims an agent. In a migration
    target `session`, MAIN_INIT waits for the client's MIGRATE_END (semi-seamless) or
    is never sent (seamless: the source's state comes in MIGRATE_DATA)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        *,
        session_id: int,
        channels: Callable[[], list[tuple[int, int]]],
        offered: Callable[[tuple[int, int]], bool] = lambda _key: True,
        client_caps: Sequence[int] = (),
        name: str | None = None,
        uuid: UUID | None = None,
        session: ServerSession | None = None,
        on_migrated_in: Callable[[MigrationOutcome], None] = lambda _outcome: None,
    ) -> None:
        super().__init__(stream, opts)
        self.session_id = session_id
        self.client_caps = tuple(client_caps)
        self.vm_name = name
        self.vm_uuid = uuid
        self.session = session
        self._channels = channels
        self._offered = offered
        self.attached = False
        # target: the client's main state came (MIGRATE_DATA or MIGRATE_END)
        self.migrated_in = trio.Event()
        self._on_migrated_in = on_migrated_in
        # source
        self.migration_dst: MigrationDstInfo | None = None
        self._mig_waiting = False  # an answer to MIGRATE_BEGIN(_SEAMLESS) is awaited
        self._mig_outcome: MigrationOutcome | None = None
        self._mig_seamless = False  # MIGRATE_BEGIN_SEAMLESS went (begin_migration)
        self._mig_answered = trio.Event()
        self._flush_marked = trio.Event()  # also set when run() ends
        self._ended = False  # run() ended
        self.migrated_out = False  # complete_migration sent its last message

    @property
    def migration_target(self) -> bool:
        """True when this main link continues a session migrating here."""
        return self.session is not None and self.session.migration_target

    async def on_start(self) -> None:
        if self.migration_target:
            log.info("%s: a migration target: no MAIN_INIT", self.name)
            return
        self._send_init()

    def _send_init(self) -> None:
        mm_time = (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF
        self.send(MsgMain.INIT, MainInit(self.session_id, multi_media_time=mm_time).encode())
        for mtype, body in name_and_uuid(self.client_caps, self.vm_name, self.vm_uuid):
            self.send(mtype, body)

    async def run(self, initial: bytes = b"") -> None:
        try:
            await super().run(initial)
        finally:
            self._ended = True
            self._flush_marked.set()
            self._mig_answered.set()

    async def handle_message(self, mtype: int, body: Body) -> None:
        if mtype == MsgcMain.ATTACH_CHANNELS:
            if self.session is not None and not self.session.resolved.is_set():
                log.warning("%s: ATTACH_CHANNELS during a migration: ignored", self.name)
                return
            self.attached = True
            self.send(MsgMain.CHANNELS_LIST, MainChannelsList(tuple(self._channels())).encode())
        elif mtype in _CONNECTED:
            self._on_migrate_connected(*_CONNECTED[MsgcMain(mtype)])
        elif mtype == MsgcMain.MIGRATE_DST_DO_SEAMLESS:
            self._on_dst_do_seamless(MainMigrateDstDoSeamless.decode(body).src_version)
        elif mtype == MsgcMain.MIGRATE_END:
            self._on_migrate_end()
        elif mtype in IGNORED:
            log.debug("%s: ignoring main message %d", self.name, mtype)
        else:
            raise UnknownMessage(f"{self.name}: unknown main message type {mtype}")

    def announce(self, channels: list[tuple[int, int]]) -> None:
        """Tell the client of channels that appeared, once it has asked for the list
        (before that, its ATTACH_CHANNELS answer will hold them)."""
        new = [key for key in channels if self._offered(key)]
        if self.attached and new:
            self.send(MsgMain.CHANNELS_LIST, MainChannelsList(tuple(new)).encode())

    # ---- target ----------------------------------------------------------------

    def _on_dst_do_seamless(self, src_version: int) -> None:
        """ACK when this session is an unresolved target and `src_version` is one this
        server reads (spice-server's reds_on_migrate_dst_set_seamless), else NACK."""
        session = self.session
        ok = (
            session is not None
            and session.migration_target
            and not session.resolved.is_set()
            and src_version <= MIGRATION_PROTOCOL_VERSION
        )
        if not ok or session is None:
            log.info("%s: MIGRATE_DST_DO_SEAMLESS(%d): NACK", self.name, src_version)
            self.send(MsgMain.MIGRATE_DST_SEAMLESS_NACK)
            return
        log.info("%s: MIGRATE_DST_DO_SEAMLESS(%d): ACK", self.name, src_version)
        self.conn.expect_migrate_data(MAIN_MIGRATE_DATA_MAX)
        session.resolve(seamless=True)
        self.send(MsgMain.MIGRATE_DST_SEAMLESS_ACK)

    async def on_migrate_data(self, body: Body) -> None:
        """The source's main state (checked; trivmc has no agent, so nothing of it is
        kept): the client switched here and had attached on the source."""
        data = MainMigrateData.decode(body, MAIN_MIGRATE_DATA_MAX)
        if data.agent_connected:
            log.info("%s: the source's agent state dropped: trivmc has no agent", self.name)
        log.info("%s: main MIGRATE_DATA taken: the seamless move is complete", self.name)
        self.attached = True
        self.migrated_in.set()
        self._on_migrated_in(MigrationOutcome.SEAMLESS)

    def _on_migrate_end(self) -> None:
        """Semi-seamless target: the client switched here; MAIN_INIT now, and the held
        VMC links go on as ordinary ones. Out of place: ignored, as spice-server."""
        session = self.session
        if session is None or not session.migration_target or session.resolved.is_set():
            log.warning("%s: unexpected MIGRATE_END: ignored", self.name)
            return
        if not has_cap(self.client_caps, MainCap.SEMI_SEAMLESS_MIGRATE):
            log.warning("%s: MIGRATE_END from a client without SEMI_SEAMLESS_MIGRATE", self.name)
            return
        log.info("%s: MIGRATE_END: the semi-seamless move is complete", self.name)
        session.resolve(seamless=False)
        self._send_init()
        self.migrated_in.set()
        self._on_migrated_in(MigrationOutcome.SEMI_SEAMLESS)

    # ---- source ----------------------------------------------------------------

    def begin_migration(self, dst: MigrationDstInfo, seamless: bool = True) -> None:
        """Ask the client to link to `dst`: MIGRATE_BEGIN_SEAMLESS (version 1) when
        `seamless` and its caps have SEAMLESS_MIGRATE and AGENT_CONNECTED_TOKENS, else
        MIGRATE_BEGIN when they have SEMI_SEAMLESS_MIGRATE, else nothing (the outcome
        is NONE at once). `seamless=False` is QEMU's default, seamless-migration=off."""
        caps = self.client_caps
        self.migration_dst = dst
        self._mig_answered = trio.Event()
        self._mig_outcome = None
        self._mig_waiting = True
        if self._ended:
            self._answered(MigrationOutcome.FAILED)
            return
        self._mig_seamless = (
            seamless
            and has_cap(caps, MainCap.SEAMLESS_MIGRATE)
            and has_cap(caps, MainCap.AGENT_CONNECTED_TOKENS)
        )
        if self._mig_seamless:
            body = MainMigrateBeginSeamless(dst, MIGRATION_PROTOCOL_VERSION).encode()
            self.send(MsgMain.MIGRATE_BEGIN_SEAMLESS, body)
        elif has_cap(caps, MainCap.SEMI_SEAMLESS_MIGRATE):
            self.send(MsgMain.MIGRATE_BEGIN, MainMigrateBegin(dst).encode())
        else:
            self._answered(MigrationOutcome.NONE)
            return
        if self.session is not None:  # its link to `dst` is never a session here
            self.session.leaving_until = time.monotonic() + EXPECT_TTL
        log.info("%s: migration to %s begins", self.name, dst.host_text)

    def _answered(self, outcome: MigrationOutcome) -> None:
        self._mig_waiting = False
        self._mig_outcome = outcome
        self._mig_answered.set()

    def _on_migrate_connected(self, success: bool, seamless: bool) -> None:
        """The client's answer; one that comes when none is awaited (after completion
        or a timeout) is answered MIGRATE_CANCEL when it says connected."""
        if not self._mig_waiting:
            log.info("%s: a late migration answer (connected: %s)", self.name, success)
            if success:
                self.send(MsgMain.MIGRATE_CANCEL)
            return
        if not success:
            outcome = MigrationOutcome.FAILED
        elif seamless and self._mig_seamless:
            outcome = MigrationOutcome.SEAMLESS
        else:
            outcome = MigrationOutcome.SEMI_SEAMLESS
        log.info("%s: the client's migration answer: %s", self.name, outcome.value)
        self._answered(outcome)

    @property
    def migration_outcome(self) -> MigrationOutcome | None:
        """The client's answer so far (None: none yet, or no migration begun)."""
        return self._mig_outcome

    async def wait_migration_connected(self) -> MigrationOutcome:
        """The client's answer to `begin_migration` (FAILED if the connection ends
        first). RuntimeError without `begin_migration`."""
        if self.migration_dst is None:
            raise RuntimeError(f"{self.name}: no migration begun")
        await self._mig_answered.wait()
        return self._mig_outcome or MigrationOutcome.FAILED

    async def complete_migration(
        self, *, before_data: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """The move completed: seamless → MIGRATE(NEED_FLUSH | NEED_DATA_TRANSFER), the
        client's flush mark, `await before_data()` if given (the session's VMC channels
        handed over), then MIGRATE_DATA (MNMD, no agent), queued when this returns;
        semi-seamless → MIGRATE_END; otherwise (no answer yet counts as FAILED) →
        MIGRATE_SWITCH_HOST. BrokenResourceError if the connection ends before the
        flush mark; RuntimeError without `begin_migration`, or a second time."""
        dst = self.migration_dst
        if dst is None or self.migrated_out:
            raise RuntimeError(f"{self.name}: no migration to complete")
        if self._mig_waiting:
            self._answered(MigrationOutcome.FAILED)
        outcome = self._mig_outcome
        self.migrated_out = True
        if outcome is MigrationOutcome.SEAMLESS:
            self.migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
            await self._flush_marked.wait()
            if self.conn.migration is not MigrationState.FLUSHED:
                raise trio.BrokenResourceError(f"{self.name}: closed before the flush mark")
            if before_data is not None:
                await before_data()
            self.send(MsgCommon.MIGRATE_DATA, MainMigrateData().encode())
            log.info("%s: main MIGRATE_DATA sent", self.name)
        elif outcome is MigrationOutcome.SEMI_SEAMLESS:
            self.send(MsgMain.MIGRATE_END)
            log.info("%s: MIGRATE_END sent", self.name)
        else:
            self.send(MsgMain.MIGRATE_SWITCH_HOST, MainMigrateSwitchHost(dst).encode())
            log.info("%s: MIGRATE_SWITCH_HOST to %s sent", self.name, dst.host_text)

    async def on_migrate_flush_mark(self) -> None:
        self._flush_marked.set()

    def cancel_migration(self) -> None:
        """The move failed or was cancelled (spice-server's migrate_src_complete(FALSE)):
        MIGRATE_CANCEL to a client that said it connected; a later answer is cancelled
        when it comes."""
        if self._mig_outcome in (MigrationOutcome.SEAMLESS, MigrationOutcome.SEMI_SEAMLESS):
            self.send(MsgMain.MIGRATE_CANCEL)
            log.info("%s: migration cancelled: MIGRATE_CANCEL sent", self.name)
        if self._mig_waiting:
            self._answered(MigrationOutcome.FAILED)
        self._mig_outcome = None
        self.migration_dst = None
