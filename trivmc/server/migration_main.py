"""The source side of moving every live session to another server, as spice-server's
spice_server_migrate_connect / spice_server_migrate_end do (docs/migration.md, "The
main channel"): MIGRATE_BEGIN(_SEAMLESS) to every main channel; the clients' answers,
waited for a bounded time; then, per session: seamless → MIGRATE on main and on each of
its VMC channels at once, main's MIGRATE_DATA last (once every VMC channel's is
written, so the client's leaving main cannot cut them off); semi-seamless →
MIGRATE_END; the rest → MIGRATE_SWITCH_HOST."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import trio

from ..protocol import MigrationDstInfo
from .main_channel import MainChannelClient, MigrationOutcome
from .session import ServerSession
from .vmc import VmcChannel

log = logging.getLogger(__name__)

ChannelStep = Callable[[VmcChannel], Awaitable[None]]
STEP_TIMEOUT = 30.0  # seconds for one session's channels and main to hand over
LEAVE_TIMEOUT = 10.0  # seconds a moved client has to leave (spice-server's MIGRATE_TIMEOUT)


async def migrate_channel(channel: VmcChannel) -> None:
    """The default step: MIGRATE to the channel's client, then wait until its
    MIGRATE_DATA was sent (`migrated`); nothing without a client."""
    client = channel.migrate_client()
    if client is not None:
        await client.migrated.wait()


async def _written(channel: VmcChannel, connection_id: int) -> None:
    """Until nothing is queued for the channel's client of `connection_id` (its
    MIGRATE_DATA is in the socket)."""
    client = channel.client
    if client is not None and client.connection_id == connection_id:
        await client.wait_queued_below(1)


async def migrate_session(
    main: MainChannelClient,
    channels: Iterable[VmcChannel],
    *,
    channel_step: ChannelStep | None = None,
    step_timeout: float = STEP_TIMEOUT,
) -> MigrationOutcome:
    """Complete the move of one session whose main channel is `main` (after
    `begin_migration`; no answer yet counts as FAILED) and return how it moved.
    Seamless: `channel_step` (default `migrate_channel`) runs for each of `channels`
    concurrently with main's MIGRATE; every wait is bounded by `step_timeout`."""
    if main.migration_outcome is not MigrationOutcome.SEAMLESS:
        await main.complete_migration()
        return main.migration_outcome or MigrationOutcome.FAILED
    step = channel_step or migrate_channel
    handed_over = trio.Event()
    cid = main.session_id
    channels = list(channels)

    async def one(channel: VmcChannel) -> None:
        await step(channel)
        await _written(channel, cid)

    async def all_channels() -> None:
        try:
            with trio.move_on_after(step_timeout) as scope:
                async with trio.open_nursery() as nursery:
                    for channel in channels:
                        nursery.start_soon(one, channel)
            if scope.cancelled_caught:
                log.warning("session %#010x: channels not handed over in time", cid)
        finally:
            handed_over.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(all_channels)
        with trio.move_on_after(step_timeout) as scope:
            try:
                await main.complete_migration(before_data=handed_over.wait)
            except trio.BrokenResourceError as e:
                log.warning("session %#010x: %s", cid, e)
        if scope.cancelled_caught:
            log.warning("session %#010x: no flush mark on main in time", cid)
    return MigrationOutcome.SEAMLESS


async def _leave(
    session: ServerSession, timeout: float, close: Callable[[ServerSession], None]
) -> None:
    """Wait at most `timeout` s for the moved client to close its session, else close
    it (spice-gtk, for one, keeps the source's main connection after a seamless move)."""
    with trio.move_on_after(timeout):
        await session.ended.wait()
    if session.alive:
        log.info(
            "session %#010x: the client did not leave %g s after the move: closed",
            session.connection_id,
            timeout,
        )
        close(session)


async def migrate_sessions(
    mains: dict[int, MainChannelClient],
    channels: Callable[[int], list[VmcChannel]],
    dst: MigrationDstInfo,
    *,
    connect_timeout: float,
    channel_step: ChannelStep | None = None,
    step_timeout: float = STEP_TIMEOUT,
    leave_timeout: float | None = LEAVE_TIMEOUT,
    close_session: Callable[[ServerSession], None] = ServerSession.close,
    counts: Counter[MigrationOutcome] | None = None,
    seamless: bool = True,
) -> dict[int, MigrationOutcome]:
    """Move every session of `mains` (connection id → main channel) to `dst`:
    begin on each, wait at most `connect_timeout` for their answers, then complete
    each session concurrently (`migrate_session`, with `channels(connection_id)`),
    then give each client `leave_timeout` seconds to close its connections and close
    the session of one that did not (`close_session`; spice-server's wait for the
    disconnect; None: neither wait nor close). `seamless=False` offers clients only
    the semi-seamless path (QEMU's seamless-migration=off). Returns how each moved;
    `counts` counts the outcomes."""
    for main in mains.values():
        main.begin_migration(dst, seamless)
    with trio.move_on_after(connect_timeout):
        async with trio.open_nursery() as nursery:
            for main in mains.values():
                nursery.start_soon(main.wait_migration_connected)
    outcomes: dict[int, MigrationOutcome] = {}

    async def complete(cid: int, main: MainChannelClient) -> None:
        outcome = await migrate_session(
            main, channels(cid), channel_step=channel_step, step_timeout=step_timeout
        )
        outcomes[cid] = outcome
        if counts is not None:
            counts[outcome] += 1
        log.info("session %#010x: migrated out (%s)", cid, outcome.value)
        if leave_timeout is not None and main.session is not None:
            await _leave(main.session, leave_timeout, close_session)

    async with trio.open_nursery() as nursery:
        for cid, main in mains.items():
            nursery.start_soon(complete, cid, main)
    return outcomes
