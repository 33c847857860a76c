"""Ground truth for the activity split: the test times what it does with a connection.

A connection is held for about 2 s inside one transaction: 1 s in ``pg_sleep`` (a query
in flight), then 1 s in the client's own sleep (idle in transaction). The split the
sampler reports must match the split the test measured to within 5% of the hold,
for the sync and the async pool.
"""

from __future__ import annotations

import asyncio
import time
from time import monotonic

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.insight.activity import ACTIVITIES, SAMPLER, insight_of, unwatch, watch

pytestmark = pytest.mark.db

TOLERANCE = 0.05  # of the whole hold


def check_split(totals: dict[str, float], query: float, idle_in_tx: float) -> None:
    held = query + idle_in_tx
    assert set(totals) == set(ACTIVITIES)
    # what the test measured, the sampler's view, both as shares of the hold
    assert abs(totals["query"] / held - query / held) <= TOLERANCE, (totals, query, idle_in_tx)
    assert abs(totals["idle_in_transaction"] / held - idle_in_tx / held) <= TOLERANCE, totals
    assert totals["idle"] / held <= TOLERANCE, totals
    assert abs(sum(totals.values()) - held) / held <= TOLERANCE, (totals, held)


def test_split_sync(dsn):
    with ConnectionPool(dsn, min_size=1, name="activity-sync") as pool:
        pool.wait()
        insight = watch(pool)
        try:
            with pool.connection() as conn:
                t0 = monotonic()
                conn.execute("SELECT pg_sleep(1)")
                t1 = monotonic()
                time.sleep(1)
                t2 = monotonic()
            time.sleep(0.1)  # a few samples after the return: nothing more is credited
            totals = insight.totals()
            time.sleep(0.1)
            assert insight.totals() == totals
        finally:
            unwatch(pool)
    assert insight_of(pool) is None
    check_split(totals, t1 - t0, t2 - t1)


def test_split_async(dsn):
    async def main() -> tuple[dict[str, float], float, float]:
        async with AsyncConnectionPool(dsn, min_size=1, name="activity-async") as pool:
            await pool.wait()
            insight = watch(pool)
            try:
                async with pool.connection() as conn:
                    t0 = monotonic()
                    await conn.execute("SELECT pg_sleep(1)")
                    t1 = monotonic()
                    await asyncio.sleep(1)
                    t2 = monotonic()
                await asyncio.sleep(0.1)
                return insight.totals(), t1 - t0, t2 - t1
            finally:
                unwatch(pool)

    totals, query, idle_in_tx = asyncio.run(main())
    check_split(totals, query, idle_in_tx)


def test_idle_checkout_and_several_connections(dsn):
    """Two connections held at once: one idle outside a transaction, one in a query."""
    with ConnectionPool(dsn, min_size=2, name="activity-two") as pool:
        pool.wait()
        insight = watch(pool)
        try:
            with pool.connection() as idle_conn, pool.connection() as busy:
                assert idle_conn is not busy
                t0 = monotonic()
                busy.execute("SELECT pg_sleep(0.6)")
                held = monotonic() - t0
            time.sleep(0.05)
            totals = insight.totals()
        finally:
            unwatch(pool)
    # the idle one was idle the whole time, the busy one in its query
    assert abs(totals["idle"] - held) / held <= 0.1, (totals, held)
    assert abs(totals["query"] - held) / held <= 0.1, (totals, held)
    assert totals["idle_in_transaction"] / held <= 0.1, totals


def test_a_closed_pool_is_no_longer_sampled_and_keeps_its_totals(dsn):
    pool = ConnectionPool(dsn, min_size=1, name="activity-closed", open=False)
    insight = watch(pool)  # watched before it opens: sampled once it is open
    time.sleep(0.05)
    assert SAMPLER.sampling(pool)
    with pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute("SELECT pg_sleep(0.1)")
    deadline = monotonic() + 10
    while SAMPLER.sampling(pool) and monotonic() < deadline:
        time.sleep(0.01)
    assert not SAMPLER.sampling(pool)
    # what it counted stays: a last state written after close() must not go back
    assert insight_of(pool) is insight and insight.totals()["query"] >= 0.05
