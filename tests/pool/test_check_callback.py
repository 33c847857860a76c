"""The ``check`` callback, sync and async: its time stays counted, and an interrupted or
cancelled check neither loses the connection nor counts as a failed check."""

from __future__ import annotations

import asyncio
import random
import time
from itertools import pairwise

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool

pytestmark = pytest.mark.db


class FakeTimeout(BaseException):
    """Stands in for gevent.Timeout: a BaseException that is not an Exception."""


def check_failures(pool) -> tuple[int, int]:
    """(check_failed errors counted, connections closed with reason check_failed)."""
    agg = pool.aggregates()
    return agg.errors.get(("check_failed", ""), 0), agg.lifetime["check_failed"].count


def accounted_requests(pool) -> tuple[int, int]:
    agg = pool.aggregates()
    return agg.requests, sum(h.count for h in agg.acquire.values())


# --- finding 1: used seconds must not go backwards when a check passes ---


def test_used_seconds_never_decrease_across_a_passing_check_sync(dsn):
    seen: list[float] = []

    def check(conn):
        ConnectionPool.check_connection(conn)
        time.sleep(0.05)
        seen.append(pool.snapshot().used_seconds_total)  # read while the check runs

    with ConnectionPool(dsn, min_size=1, max_size=1, check=check, open=True) as pool:
        pool.wait()
        for _ in range(5):
            conn = pool.getconn()
            seen.append(pool.snapshot().used_seconds_total)
            pool.putconn(conn)
            seen.append(pool.snapshot().used_seconds_total)
    drops = [(a, b) for a, b in pairwise(seen) if b < a]
    assert drops == [], f"used_seconds_total went backwards: {drops}"
    # the check's own time is time the connection was busy: 5 checks of >= 50 ms
    assert seen[-1] >= 5 * 0.05


async def test_used_seconds_never_decrease_across_a_passing_check_async(dsn):
    seen: list[float] = []

    async def check(conn):
        await AsyncConnectionPool.check_connection(conn)
        await asyncio.sleep(0.05)
        seen.append(pool.snapshot().used_seconds_total)

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, check=check) as pool:
        await pool.wait()
        for _ in range(5):
            conn = await pool.getconn()
            seen.append(pool.snapshot().used_seconds_total)
            await pool.putconn(conn)
            seen.append(pool.snapshot().used_seconds_total)
    drops = [(a, b) for a, b in pairwise(seen) if b < a]
    assert drops == [], f"used_seconds_total went backwards: {drops}"
    assert seen[-1] >= 5 * 0.05


# --- issue 13 item 4: a BaseException inside check ---


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, FakeTimeout])
def test_base_exception_in_check_keeps_the_connection_sync(dsn, exc_type):
    raise_next = [True]

    def check(conn):
        if raise_next[0]:
            raise_next[0] = False
            raise exc_type()
        ConnectionPool.check_connection(conn)

    with ConnectionPool(dsn, min_size=1, max_size=1, check=check, open=True) as pool:
        pool.wait()
        with pytest.raises(exc_type):
            pool.getconn(timeout=2)
        s = pool.snapshot()
        assert (s.used, s.size) == (0, 1), s
        with pool.connection(timeout=5) as conn:  # max_size=1: only if it came back
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert check_failures(pool) == (0, 0)
        requests, outcomes = accounted_requests(pool)
        assert requests == outcomes == 2
        assert pool.aggregates().acquire["cancelled"].count == 1
        assert all(t.is_alive() for t in pool._workers)


async def test_base_exception_in_check_keeps_the_connection_async(dsn):
    raise_next = [True]

    async def check(conn):
        if raise_next[0]:
            raise_next[0] = False
            raise FakeTimeout()
        await AsyncConnectionPool.check_connection(conn)

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, check=check) as pool:
        await pool.wait()
        with pytest.raises(FakeTimeout):
            await pool.getconn(timeout=2)
        s = pool.snapshot()
        assert (s.used, s.size) == (0, 1), s
        async with pool.connection(timeout=5) as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        assert check_failures(pool) == (0, 0)
        requests, outcomes = accounted_requests(pool)
        assert requests == outcomes == 2
        assert pool.aggregates().acquire["cancelled"].count == 1
        assert all(not t.done() for t in pool._workers)


# --- finding 8: a check cancelled by its caller is not a failed check ---


@pytest.mark.slow
async def test_cancellation_storm_makes_no_false_check_failures(dsn):
    async def check(conn):
        # a real round trip that a cancellation can interrupt half way
        await conn.execute("SELECT pg_sleep(0.005)")

    rng = random.Random(12)
    cancelled = 0

    async def one_request(pool):
        nonlocal cancelled
        try:
            async with asyncio.timeout(rng.uniform(0.0005, 0.02)):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
        except TimeoutError:
            cancelled += 1

    async with AsyncConnectionPool(dsn, min_size=2, max_size=2, check=check) as pool:
        await pool.wait()
        for _ in range(15):
            await asyncio.gather(*(one_request(pool) for _ in range(20)))
        assert cancelled > 0, "the storm cancelled nothing: it proves nothing"
        assert check_failures(pool) == (0, 0)
        # every healthy connection survived (none of the pool's own ones was closed)
        agg = pool.aggregates()
        closed = {r: h.count for r, h in agg.lifetime.items() if h.count}
        assert closed.get("check_failed", 0) == 0, closed
        deadline = time.monotonic() + 10
        while pool.snapshot().used and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        s = pool.snapshot()
        assert s.used == 0 and s.idle + s.opening == s.size == 2, s
        async with pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
        requests, outcomes = accounted_requests(pool)
        assert requests == outcomes
