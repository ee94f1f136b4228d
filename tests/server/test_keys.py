"""Link keys: made in a child process off the event loop, a thread when that fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trivmc.protocol import KeyPool
from trivmc.protocol.ticket import LinkKey, generate_key
from trivmc.server import keys as keys_module
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
            assert maker.made_in_process == made
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
