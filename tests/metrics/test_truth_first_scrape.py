"""Every family of the contract is in the very first scrape of a fresh pool, sync and async."""

from __future__ import annotations

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.metrics import METRICS
from poolwatch.observe import CLOSE_REASONS, LIFETIME_BUCKETS

from .scrape import exporter, scrape

pytestmark = pytest.mark.db


def assert_every_family(pool) -> None:
    assert pool.aggregates().closed == 0, "the pool closed a connection: not a fresh pool"
    with exporter([pool]) as srv:
        s = scrape(srv.url)
    missing = [m.prom for m in METRICS if m.prom not in s.text and not m.opt_in]
    assert missing == []
    # the lifetime histogram is there with every reason, and every bucket at zero
    for reason in CLOSE_REASONS:
        name = "poolwatch_connection_lifetime_seconds"
        assert s.value(name + "_count", pool=pool.name, reason=reason) == 0
        buckets = s.samples(name + "_bucket", pool=pool.name, reason=reason)
        assert len(buckets) == len(LIFETIME_BUCKETS) + 1
        assert all(v == 0 for _, v in buckets)


def test_a_fresh_pool_exports_every_family_sync(dsn):
    with ConnectionPool(dsn, min_size=1, name="fresh-sync", open=True) as pool:
        pool.wait()
        assert_every_family(pool)


async def test_a_fresh_pool_exports_every_family_async(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, name="fresh-async") as pool:
        await pool.wait()
        assert_every_family(pool)
