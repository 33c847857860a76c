"""The fast paths inlined into connection() blocks, and the hold times they keep aside.

A block takes and gives back its connection without calling getconn()/putconn()
when nothing else needs to run (`BasePool._refresh_fast_paths`), and its hold time
waits in `BasePool._holds` until a reader folds it into the use histogram and the
used seconds. These tests check that every reader sees every hold, that the list
stays bounded when nobody reads, that the folded histogram is the one `observe()`
would have built, and that whatever turns the inlined paths off (a `wait()` in
progress, call-site attribution, a shrink, a drain) is honoured by a block that is
already open.
"""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.observe import ACQUIRE_BUCKETS, USE_BUCKETS, Histogram
from poolwatch.pool.base import HOLDS_FOLD_AT

from ..acompat import wait_until

pytestmark = pytest.mark.db

# More blocks than one fold holds, so that some were folded by the return that filled
# the list and the rest are still aside when the first reader comes.
BLOCKS = HOLDS_FOLD_AT + HOLDS_FOLD_AT // 2


@pytest.mark.parametrize("bounds", [USE_BUCKETS, ACQUIRE_BUCKETS])
def test_observe_all_counts_as_observe_does(bounds):
    rng = random.Random(17)
    for _ in range(200):
        values = [rng.choice(bounds) for _ in range(rng.randrange(0, 20))]  # exactly on a bound
        values += [rng.uniform(0.0, bounds[-1] * 1.5) for _ in range(rng.randrange(0, 50))]
        values += [0.0, bounds[0] / 2, math.nextafter(bounds[3], math.inf)]
        values += [bounds[-1] * 10]  # beyond the last bound: +Inf
        rng.shuffle(values)
        one_by_one, all_at_once = Histogram(bounds), Histogram(bounds)
        for v in values:
            one_by_one.observe(v)
        all_at_once.observe_all(list(values))
        assert all_at_once.counts == one_by_one.counts
        assert math.isclose(all_at_once.sum, one_by_one.sum, rel_tol=1e-12, abs_tol=1e-15)


def _run_blocks(pool: ConnectionPool, n: int) -> tuple[float, float]:
    """n blocks one after the other; the seconds spent inside them, and around them."""
    clock = time.monotonic  # the pool's clock
    inside = around = 0.0
    for _ in range(n):
        t0 = clock()
        with pool.connection():
            t1 = clock()
            t2 = clock()
        around += clock() - t0
        inside += t2 - t1
    return inside, around


def _pending_holds(pool: ConnectionPool[Any]) -> int:
    """Hold times not yet folded: in _holds, and in the compiled blocks' desk."""
    return len(pool._holds) + (pool._desk.held if pool._desk is not None else 0)


@pytest.mark.parametrize("reader", ["aggregates", "snapshot", "get_stats"])
def test_the_first_reader_sees_every_hold(dsn, reader):
    with ConnectionPool(dsn, min_size=1, max_size=1, name=f"holds-{reader}") as pool:
        pool.wait()
        before = pool.aggregates().use.count  # the wait() does not lend, but be sure
        inside, around = _run_blocks(pool, BLOCKS)
        # Bounded while nobody reads: the Python return that fills the list folds it;
        # the compiled blocks count theirs in the desk's buckets, which do not grow.
        if pool._desk is None:
            assert 0 < _pending_holds(pool) < HOLDS_FOLD_AT
        else:
            assert _pending_holds(pool) == BLOCKS and pool._holds == []
        if reader == "aggregates":
            assert pool.aggregates().use.count - before == BLOCKS
        elif reader == "snapshot":
            used = pool.snapshot().used_seconds_total
            assert inside - 1e-9 <= used <= around + 1e-9
        else:
            usage_ms = pool.get_stats()["usage_ms"]
            assert int(1000.0 * inside) - 1 <= usage_ms <= int(1000.0 * around) + 1
        assert _pending_holds(pool) == 0  # folded by that read
        agg = pool.aggregates()
        assert agg.use.count - before == BLOCKS
        assert inside - 1e-9 <= agg.use.sum <= around + 1e-9
        assert math.isclose(pool.snapshot().used_seconds_total, agg.use.sum, abs_tol=1e-6)


def test_a_block_ending_wakes_a_wait_for_the_pool_to_fill(dsn):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="holds-wait") as pool:
        pool.wait()
        block = pool.connection()
        block.__enter__()
        other = pool.getconn()
        errors: list[BaseException] = []

        def wait_for_full() -> None:
            try:
                pool.wait(timeout=10)
            except BaseException as ex:  # reported below
                errors.append(ex)

        waiter = threading.Thread(target=wait_for_full, daemon=True)
        waiter.start()
        wait_until(lambda: pool._pool_full_event is not None, timeout=10)
        pool.putconn(other)
        block.__exit__(None, None, None)  # the second idle connection: the pool is full
        waiter.join(timeout=30)
        assert not waiter.is_alive()
        assert errors == []  # without the wake-up, wait() times out and closes the pool
        assert not pool.closed


async def test_an_async_block_ending_wakes_a_wait_for_the_pool_to_fill(dsn):
    import asyncio

    async with AsyncConnectionPool(dsn, min_size=2, max_size=2, name="holds-await") as pool:
        await pool.wait()
        block = pool.connection()
        await block.__aenter__()
        other = await pool.getconn()
        waiting = asyncio.ensure_future(pool.wait(timeout=10))
        for _ in range(1000):
            if pool._pool_full_event is not None:
                break
            await asyncio.sleep(0.01)
        await pool.putconn(other)
        await block.__aexit__(None, None, None)
        await asyncio.wait_for(waiting, 30)  # raises PoolTimeout if never woken
        assert not pool.closed


def test_call_sites_turned_on_during_a_block(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="holds-sites") as pool:
        pool.wait()
        block = pool.connection()
        conn = block.__enter__()  # inlined: no site
        pool.track_call_sites(lambda: "here")
        block.__exit__(None, None, None)
        assert pool._sites == {}
        with pool.connection() as again:  # getconn() now: the site is recorded
            assert again is conn
            assert pool._sites == {conn: "here"}
        assert pool._sites == {}
        pool.track_call_sites(None)
        with pool.connection():
            assert pool._sites == {}


def test_a_block_open_through_a_shrink_closes_its_surplus_connection(dsn):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="holds-shrink") as pool:
        pool.wait()
        blocks = [pool.connection() for _ in range(2)]
        conns = [b.__enter__() for b in blocks]
        pool.resize(1, 1)
        for b in blocks:
            b.__exit__(None, None, None)
        snap = pool.snapshot()
        assert (snap.size, snap.idle, snap.used) == (1, 1, 0)
        assert pool.aggregates().lifetime["shrink"].count == 1
        wait_until(lambda: sum(c.closed for c in conns) == 1, timeout=30)  # closed by a worker


def test_a_block_open_through_a_drain_retires_its_connection(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="holds-drain") as pool:
        pool.wait()
        with pool.connection() as conn:
            pool.drain()
        assert pool.aggregates().lifetime["drain"].count == 1
        wait_until(lambda: conn.closed, timeout=30)  # closed by a worker
        wait_until(lambda: pool.snapshot().idle == 1, timeout=30)  # replaced
        with pool.connection() as fresh:
            assert fresh is not conn


def test_a_block_outliving_its_connection_retires_it(dsn):
    # The compiled block reads the connection's expiry when it takes it and trusts
    # that copy at its end (only drain() changes it meanwhile, and says so): a
    # connection that expires during the block must not go back to the idle list.
    with ConnectionPool(dsn, min_size=1, max_size=1, max_lifetime=1.0, name="holds-life") as pool:
        pool.wait()
        with pool.connection() as conn:
            time.sleep(max(0.0, conn._expire_at - time.monotonic()) + 0.05)
        assert pool.aggregates().lifetime["max_lifetime"].count == 1
        wait_until(lambda: conn.closed, timeout=30)  # closed by a worker
        wait_until(lambda: pool.snapshot().idle == 1, timeout=30)  # replaced
        with pool.connection() as fresh:
            assert fresh is not conn
