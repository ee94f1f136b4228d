"""The migration part of a VMC channel's client (docs/migration.md, "The server
side"): on a source, MIGRATE, what the client sends until its flush mark, and the
device's queue leaving as MIGRATE_DATA; on a target, MIGRATE_DATA restored before
anything else, and device data only from then on."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import trio

from ..chardev.migration import MigratableCharDevice
from ..protocol import (
    SVMD_HEADER_SIZE,
    MigrateFlags,
    MsgCommon,
    ProtocolError,
    VmcMigrateDataHeader,
    check_vmc_migrate_data,
)
from ..protocol.messages import Body
from .channel import ChannelClient, ChannelOptions

log = logging.getLogger("trivmc.server.vmc")

_NO_WAIT = nullcontext()  # stateless: shared by every DATA that finds room
NO_FLOW_CONTROL = 0xFFFFFFFF  # SVMD's token counts for a client without flow control (~0)


class MigrationTooLarge(ProtocolError):
    """A migration source's client sent more before its flush mark than MIGRATE_DATA
    may carry: the channel ends (docs/limits.md)."""


class MigratingChannel(Protocol):
    """What of its VmcChannel a migrating client uses."""

    @property
    def device(self) -> MigratableCharDevice: ...

    @property
    def client(self) -> object: ...


class MigratingClient(ChannelClient):
    """A VMC channel client's migration states, source and target."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        opts: ChannelOptions,
        *,
        channel: MigratingChannel,
        migration_target: bool,
    ) -> None:
        super().__init__(stream, opts)
        self._channel = channel
        # the hot path (`handle_now`) is off while the common rules must see every
        # message: on a target until MIGRATE_DATA, on a source after the flush mark
        self._hot = not migration_target
        self.migration_target = migration_target
        self.migrated = trio.Event()  # MIGRATE_DATA sent (source) or restored (target)
        self.migrated_bytes = 0  # the pending write bytes it carried
        # a source device holds at most its budget plus one message (get_write_buffer),
        # plus what was in flight when MIGRATE went out (`_hold_for_migration`): all of
        # it may come in MIGRATE_DATA, whatever max_message says
        self.max_migrated = channel.device.byte_budget + 2 * self.decoder.max_size
        # a source between MIGRATE and the flush mark: what found no room in the byte
        # budget, held for MIGRATE_DATA (the client's bytes up to its mark must be read)
        self._held: bytearray | None = None
        self._budget_scope: trio.CancelScope | None = None  # a DATA waiting for room
        if migration_target:
            self.conn.expect_migrate_data(SVMD_HEADER_SIZE + self.max_migrated)

    def budget_wait(self) -> AbstractContextManager[object]:
        """The scope a DATA waits for budget room in: MIGRATE going out cancels it (the
        message is then held for MIGRATE_DATA, as everything after it until the mark:
        `holding`). With room now there is no wait, and no scope is made (the device's
        get_write_buffer returns without a scheduling point)."""
        if self._channel.device.has_room:
            return _NO_WAIT
        self._budget_scope = trio.CancelScope()
        return self._budget_scope

    @property
    def holding(self) -> bool:
        """MIGRATE is out and the flush mark not in: DATA is held for MIGRATE_DATA."""
        return self._held is not None

    async def _hold_for_migration(self, data: Body) -> None:
        """Between MIGRATE and the flush mark: every DATA is held for MIGRATE_DATA (after
        the device's queue: order kept), up to what a target takes (`max_migrated`).
        spice-server's VMC device has no budget at all; a stalled device must not keep
        the flush mark unread behind budget waits."""
        assert self._held is not None
        if self._channel.device.buffered_bytes + len(self._held) + len(data) > self.max_migrated:
            raise MigrationTooLarge(
                f"{self.name}: more than {self.max_migrated} bytes would have to travel"
                " in MIGRATE_DATA (the device is stalled)"
            )
        self._held += data

    def start_migration(self) -> None:
        """A source: send MIGRATE (NEED_FLUSH | NEED_DATA_TRANSFER); MIGRATE_DATA
        follows the client's flush mark (`migrated` is set then)."""
        self._hot = False  # every message in order through handle_message until the mark
        self._held = bytearray()
        if self._budget_scope is not None:
            self._budget_scope.cancel()  # a DATA waiting for room is held instead
        self.migrate(MigrateFlags.NEED_FLUSH | MigrateFlags.NEED_DATA_TRANSFER)
        log.info("%s: migrating: MIGRATE sent", self.name)

    async def on_migrate_flush_mark(self) -> None:
        """Everything the client sent is in the device's queue: hand what the device
        has not written to the client as MIGRATE_DATA; the device never writes it."""
        self._hot = False  # the client sends nothing more: the common rules refuse it
        pending = self._channel.device.take_pending_writes()
        if self._held:  # newer than the device's queue; taken from the client by the
            # device's count (in_data) and handed on at once (migrated_out)
            stats = self._channel.device.stats
            stats.in_data += len(self._held)
            stats.migrated_out += len(self._held)
            pending += bytes(self._held)
        self._held = None
        header = VmcMigrateDataHeader(
            True, NO_FLOW_CONTROL, NO_FLOW_CONTROL, len(pending), 0, pending=pending
        )
        self.send_large(MsgCommon.MIGRATE_DATA, header.encode())
        self.migrated_bytes = len(pending)
        self.migrated.set()
        log.info("%s: MIGRATE_DATA sent with %d pending bytes", self.name, len(pending))

    async def on_migrate_data(self, body: Body) -> None:
        """A target: check the source's SVMD (`max_migrated` bounds it before anything
        is copied) and queue its bytes ahead of the client's next."""
        device = self._channel.device
        mig = check_vmc_migrate_data(body, self.max_migrated)
        device.restore_pending_writes(mig.pending)
        self.migrated_bytes = len(mig.pending)
        self._hot = True
        self.migrated.set()
        log.info("%s: MIGRATE_DATA restored %d pending bytes", self.name, len(mig.pending))
        self.restored()

    def restored(self) -> None:
        """A target's MIGRATE_DATA is restored: device data may flow to the client now
        (spice-server's device waits for the migration data the same way)."""
