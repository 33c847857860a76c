"""Async cancellation at any point never leaks a connection."""

from __future__ import annotations

import asyncio
import random

import pytest

from poolwatch import AsyncConnectionPool, AsyncNullConnectionPool

pytestmark = pytest.mark.db


@pytest.mark.parametrize("cls", [AsyncConnectionPool, AsyncNullConnectionPool])
async def test_cancelled_tasks_leak_nothing(dsn, cls):
    rng = random.Random(1234)
    async with cls(
        dsn, max_size=3, **({"min_size": 3} if cls is AsyncConnectionPool else {})
    ) as pool:

        async def user():
            async with pool.connection(timeout=10) as conn:
                await conn.execute("SELECT pg_sleep(0.005)")

        for _round in range(10):  # bounded: 10 rounds of 20 tasks
            tasks = [asyncio.create_task(user()) for _ in range(20)]
            await asyncio.sleep(rng.uniform(0, 0.02))
            for t in tasks:
                if rng.random() < 0.5:
                    t.cancel()
            await asyncio.wait(tasks, timeout=20)
        for _ in range(200):
            s = pool.snapshot()
            if s.used == 0 and s.waiting == 0:
                break
            await asyncio.sleep(0.02)
        s = pool.snapshot()
        assert (s.used, s.waiting) == (0, 0)
        a = pool.aggregates()
        assert a.opened - a.closed == s.idle
        assert a.acquire["cancelled"].count > 0
        async with pool.connection(timeout=5) as conn:  # still serving
            await conn.execute("SELECT 1")


async def test_cancelled_waiter_gets_no_connection(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
        await pool.wait()
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn(timeout=10))
        await asyncio.sleep(0.05)
        assert pool.snapshot().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.snapshot().waiting == 0
        await pool.putconn(held)
        assert pool.snapshot().idle == 1
