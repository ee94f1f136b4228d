"""Link keys: made by worker processes off the event loop (a thread when none can run);
fresh per link with a password, one shared key without."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trivmc.client import SpiceLinkError
from trivmc.client.address import parse_uri
from trivmc.client.connection import link_channel
from trivmc.protocol import ChannelType
from trivmc.protocol.ticket import LinkKey, generate_key
from trivmc.server import Server
from trivmc.server import keys as keys_module
from trivmc.server.keypool import KeyPool
from trivmc.server.keys import KeyMaker

from .test_bad_input import ECHO, serving, still_serves


async def test_pool_filled_by_the_worker_process_and_refilled() -> None:
    pool = KeyPool(3)
    maker = KeyMaker(pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        assert len(pool) == 3 and maker.made_in_process == 3 and maker.made_in_thread == 0
        taken = {pool.take().public_der for _ in range(2)}
        assert len(taken) == 2  # never the same key twice
        maker.want()
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == 5
        assert not taken & {pool.take().public_der for _ in range(3)}
        nursery.cancel_scope.cancel()


async def test_thread_fallback_when_the_process_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(keys_module, "WORKER", tmp_path / "missing.py")
    pool = KeyPool(2)
    maker = KeyMaker(pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        assert len(pool) == 2 and maker.made_in_thread == 2
        nursery.cancel_scope.cancel()
    assert "key generator process failed" in caplog.text


async def test_server_links_with_process_keys() -> None:
    async with serving() as (server, uri):
        await still_serves(uri, server)
        assert server.key_maker.made_in_process >= server.keys.size


def test_trusted_der_round_trip() -> None:
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    der = key.private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    again = LinkKey.from_trusted_der(der)
    assert again.public_der == key.public_der
    with pytest.raises(ValueError):
        LinkKey.from_trusted_der(b"\x30\x03\x02\x01\x00")


assert ECHO


async def test_serving_starts_after_the_first_batch_and_the_pool_fills_behind() -> None:
    pool = KeyPool(keys_module.BATCH + 4)
    maker = KeyMaker(pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        assert keys_module.BATCH <= len(pool) <= pool.size
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == pool.size
        nursery.cancel_scope.cancel()


async def test_refill_waits_for_links_to_go_quiet(mock_clock: trio.testing.MockClock) -> None:
    pool = KeyPool(6)
    maker = KeyMaker(pool, quiet=1.0, low_water=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        await maker.wait_full()
        made = maker.made_in_process
        for _ in range(3):  # a burst of links: no key is made beside it
            pool.take()
            maker.want()
            mock_clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert maker.made_in_process == made and maker.in_flight == 0
        mock_clock.jump(1.0)  # quiet: the pool is refilled
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == made + 3
        pool.take(), pool.take(), pool.take(), pool.take()  # at low water: refilled at once
        maker.want()
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == made + 7
        nursery.cancel_scope.cancel()


async def test_a_pool_of_no_keys_starts_at_once() -> None:
    maker = KeyMaker(KeyPool(0))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(maker.run)
        assert maker.made_in_process == 0
        nursery.cancel_scope.cancel()


async def test_take_from_an_empty_pool_waits_for_the_maker() -> None:
    pool = KeyPool(2)
    maker = KeyMaker(pool, quiet=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        first = {pool.take().public_der, pool.take().public_der}  # emptied behind its back
        assert len(pool) == 0
        with trio.fail_after(30):
            key = await maker.take()
        assert key.public_der not in first
        assert maker.made_in_process >= 3  # made by the worker, not inline
        nursery.cancel_scope.cancel()


# ---- several workers --------------------------------------------------------------


def test_one_worker_per_usable_core_by_default() -> None:
    import os

    maker = KeyMaker(KeyPool(1))
    assert maker.workers == min(len(os.sched_getaffinity(0)), keys_module.MAX_WORKERS)
    with pytest.raises(ValueError):
        KeyMaker(KeyPool(1), workers=0)


async def test_several_workers_fill_the_pool_together() -> None:
    pool = KeyPool(keys_module.BATCH)
    maker = KeyMaker(pool, workers=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        with trio.fail_after(30):
            await maker.wait_until(lambda: maker.ready_workers == {0, 1})
            await maker.wait_full()
        assert len(maker.processes) == 2
        before = maker.made_by.copy()
        while len(pool):  # every worker is idle: an empty pool is split between them
            pool.take()
        maker.want()
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_by[0] - before[0] == keys_module.BATCH // 2
        assert maker.made_by[1] - before[1] == keys_module.BATCH // 2
        assert maker.made_in_thread == 0
        nursery.cancel_scope.cancel()
    assert not maker.processes  # every worker ended with the maker


async def _drain_and_refill(maker: KeyMaker) -> None:
    while len(maker.pool):
        maker.pool.take()
    maker.want()
    with trio.fail_after(30):
        await maker.wait_full()


async def test_a_dead_worker_is_survived_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = KeyPool(6)
    maker = KeyMaker(pool, workers=2, restart_delay=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        with trio.fail_after(30):
            await maker.wait_until(lambda: maker.ready_workers == {0, 1})
        victim = maker.processes[0]
        victim.kill()  # idle: noticed at once, not at its next claim
        with trio.fail_after(30):
            await maker.wait_until(lambda: maker.processes.get(0) not in (None, victim))
            await maker.wait_until(lambda: maker.ready_workers == {0, 1})
        assert maker.worker_restarts == 1
        assert "key generator worker 0 ended" in caplog.text
        await _drain_and_refill(maker)

        for proc in list(maker.processes.values()):  # every worker at once: restarted
            proc.kill()
        await _drain_and_refill(maker)
        assert maker.worker_restarts >= 2
        assert maker.made_in_thread == 0
        nursery.cancel_scope.cancel()


async def test_keys_owed_by_a_worker_that_dies_are_made_by_the_others() -> None:
    pool = KeyPool(2 * keys_module.BATCH)
    maker = KeyMaker(pool, workers=2, restart_delay=60.0)  # no restart within the test
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        with trio.fail_after(30):
            await maker.wait_until(lambda: maker.ready_workers == {0, 1})
            await maker.wait_full()
        while len(pool):
            pool.take()
        maker.want()
        await trio.testing.wait_all_tasks_blocked()  # both have claimed their share
        made = maker.made_by.copy()
        maker.processes[0].kill()
        with trio.fail_after(30):
            await maker.wait_full()
        assert 0 not in maker.processes  # not back yet: worker 1 made worker 0's keys
        assert maker.made_by[1] - made[1] >= keys_module.BATCH + 1
        assert maker.made_in_thread == 0
        nursery.cancel_scope.cancel()


# ---- which key a link gets ----------------------------------------------------------


async def test_password_less_links_share_one_key_from_the_pool() -> None:
    pool = KeyPool(2)
    maker = KeyMaker(pool, workers=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        with trio.fail_after(30):
            await maker.wait_full()
        first = pool._keys[0]
        shared = {id(await maker.link_key(fresh=False)) for _ in range(200)}
        assert shared == {id(first)} and maker.shared_key is first
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == 3  # the pool's two, and one to replace the shared
        fresh = await maker.link_key(fresh=True)  # a password: the shared key is retired
        assert fresh is not first and maker.shared_key is None
        again = await maker.link_key(fresh=False)
        assert again is not first and again is not fresh
        nursery.cancel_scope.cancel()


def _spy_link_keys(server: Server) -> list[bytes]:
    """The public key of every link the server makes from now on."""
    taken: list[bytes] = []
    link_key = server.key_maker.link_key

    async def spy(*, fresh: bool) -> LinkKey:
        key = await link_key(fresh=fresh)
        taken.append(key.public_der)
        return key

    server.key_maker.link_key = spy  # type: ignore[method-assign]
    return taken


async def _main_links(uri: str, count: int, password: str | None = None) -> None:
    for _ in range(count):
        linked = await link_channel(parse_uri(uri), 0, ChannelType.MAIN, 0, [], password)
        await linked.stream.aclose()


async def test_200_password_less_links_take_no_fresh_key() -> None:
    async with serving() as (server, uri):  # a pool of 2
        taken = _spy_link_keys(server)
        await _main_links(uri, 1)  # the first takes the shared key from the pool
        with trio.fail_after(30):
            await server.key_maker.wait_full()
        made = server.key_maker.made_in_process
        with trio.fail_after(60):
            await _main_links(uri, 200)
        assert len(taken) == 201 and len(set(taken)) == 1
        assert server.key_maker.made_in_process == made and len(server.keys) == 2
        assert server.links_refused == 0


async def test_with_a_password_every_link_gets_a_fresh_key() -> None:
    async with serving(password="secret") as (server, uri):  # a pool of 2
        taken = _spy_link_keys(server)
        with trio.fail_after(60):
            await _main_links(uri, 10, "secret")  # 5 times the pool: waits for workers
        assert len(taken) == 10 and len(set(taken)) == 10
        assert server.key_maker.shared_key is None and server.links_refused == 0
        with pytest.raises(SpiceLinkError):
            await _main_links(uri, 1, "wrong")
        assert len(set(taken)) == 11


async def test_password_set_and_cleared_at_runtime_decides_per_link() -> None:
    async with serving() as (server, uri):
        taken = _spy_link_keys(server)
        await _main_links(uri, 2)
        assert taken[0] == taken[1]
        server.password = b"now"  # as a control socket will set it
        await _main_links(uri, 2, "now")
        with pytest.raises(SpiceLinkError):
            await _main_links(uri, 1)  # no ticket: refused
        assert len(set(taken)) == 4  # two fresh keys and the refused link's: none shared
        server.password = None
        await _main_links(uri, 2)
        assert taken[-1] == taken[-2]  # shared again, but not the key shared before
        assert taken[-1] not in taken[:-2]


async def test_password_less_links_also_defer_a_refill(
    mock_clock: trio.testing.MockClock,
) -> None:
    pool = KeyPool(6)
    maker = KeyMaker(pool, workers=1, quiet=1.0, low_water=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(maker.run)
        await maker.wait_full()
        shared = await maker.link_key(fresh=False)  # takes one key: a refill is due
        made = maker.made_in_process
        for _ in range(3):  # but links go on, without a password: no key made beside them
            mock_clock.jump(0.5)
            assert await maker.link_key(fresh=False) is shared
            await trio.testing.wait_all_tasks_blocked()
            assert maker.made_in_process == made and maker.in_flight == 0  # none asked
        mock_clock.jump(1.0)  # quiet
        with trio.fail_after(30):
            await maker.wait_full()
        assert maker.made_in_process == made + 1
        nursery.cancel_scope.cancel()


def test_key_pool_refill_n() -> None:
    pool = KeyPool(3)
    assert pool.refill(1) == 1 and len(pool) == 1
    assert pool.refill() == 2 and len(pool) == 3
    assert pool.refill() == 0


def test_key_pool_never_reuses() -> None:
    pool = KeyPool(2)
    assert pool.refill() == 2
    keys = {pool.take().public_der for _ in range(3)}  # the third is made on demand
    assert len(keys) == 3 and all(len(k) == 162 for k in keys)
