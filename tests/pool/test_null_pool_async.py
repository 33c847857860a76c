"""AsyncNullConnectionPool against a real PostgreSQL (sync twin: test_null_pool.py)."""

from __future__ import annotations

import pytest

from poolwatch import AsyncNullConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from ..acompat import agather, aspawn, await_until

pytestmark = pytest.mark.db


async def test_defaults(dsn):
    pool = AsyncNullConnectionPool(dsn, open=False)
    assert (pool.min_size, pool.max_size) == (0, 0)
    with pytest.raises(ValueError, match="min_size = 0"):
        AsyncNullConnectionPool(dsn, min_size=1, open=False)


async def test_each_request_gets_a_new_connection(dsn, pg):
    async with AsyncNullConnectionPool(dsn, kwargs={"application_name": "null-new"}) as pool:
        pids = []
        for _ in range(3):
            async with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
                assert pg.backends("null-new") == 1
        assert len(set(pids)) == 3
        assert pool.snapshot().size == 0
        a = pool.aggregates()
        assert a.opened == a.closed == 3
        assert pool.get_stats()["connections_num"] == 3


async def test_max_size_queues_and_hands_over(dsn, pg):
    async with AsyncNullConnectionPool(
        dsn, max_size=1, kwargs={"application_name": "null-max"}
    ) as pool:
        held = await pool.getconn()
        got = []

        async def waiter():
            async with pool.connection(timeout=10) as conn:
                got.append(conn)

        task = aspawn(waiter)
        await await_until(lambda: pool.snapshot().waiting == 1)
        assert pg.backends("null-max") == 1
        await pool.putconn(held)
        await agather(task)
        assert got == [held]  # handed over, not closed and reopened
        assert pool.aggregates().opened == 1


async def test_timeout_and_max_waiting(dsn):
    async with AsyncNullConnectionPool(dsn, max_size=1, max_waiting=1) as pool:
        held = await pool.getconn()
        with pytest.raises(PoolTimeout, match="size=1/1"):
            await pool.getconn(timeout=0.2)
        served = []

        async def waiter():
            async with pool.connection(timeout=5) as conn:
                served.append(conn)

        task = aspawn(waiter)
        await await_until(lambda: pool.snapshot().waiting == 1)
        with pytest.raises(TooManyRequests):
            await pool.getconn()
        await pool.putconn(held)
        await agather(task)
        assert served == [held]
        assert pool.aggregates().acquire["too_many"].count == 1


async def test_wait_checks_connectivity(dsn, pg):
    async with AsyncNullConnectionPool(dsn) as pool:
        await pool.wait(timeout=5)
        assert pool.snapshot().size == 0
    bad = AsyncNullConnectionPool(pg.dsn(port=1), open=False)
    await bad.open()
    with pytest.raises(PoolTimeout, match="initialization incomplete"):
        await bad.wait(timeout=0.5)
    assert bad.closed
    with pytest.raises(PoolClosed):
        await bad.getconn()


async def test_resize_only_changes_max(dsn):
    async with AsyncNullConnectionPool(dsn, max_size=2) as pool:
        await pool.resize(0, 5)
        assert pool.max_size == 5
        with pytest.raises(ValueError):
            await pool.resize(1, 5)
        await pool.check()  # nothing to check
