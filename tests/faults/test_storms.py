"""Storms: thousands of cancelled tasks, hundreds of threads, on a pool of 4."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool

pytestmark = [pytest.mark.db, pytest.mark.slow]


def assert_exact(pool, requests: int) -> None:
    """Nothing leaked, nothing lost: the pool at rest and its counters add up."""
    snap = pool.snapshot()
    agg = pool.aggregates()
    assert snap.used == 0 and snap.waiting == 0, snap
    assert snap.idle == snap.size, snap
    assert agg.opened - agg.closed == snap.size
    outcomes = sum(h.count for h in agg.acquire.values())
    assert agg.requests == requests == outcomes, (agg.requests, requests, outcomes)


async def test_cancellation_storm_leaks_nothing(dsn):
    rng = random.Random(7)
    async with AsyncConnectionPool(dsn, min_size=4, max_size=4, name="cancel-storm") as pool:
        await pool.wait()
        holding = 0

        async def borrower(i: int) -> None:
            nonlocal holding
            async with pool.connection(timeout=30) as conn:
                holding += 1
                try:
                    if i % 3 == 0:
                        await conn.execute("SELECT 1")
                    await asyncio.sleep(rng.random() * 0.005)
                finally:
                    holding -= 1

        tasks = [asyncio.create_task(borrower(i)) for i in range(3000)]
        cancelled = 0
        deadline = time.monotonic() + 20
        # Cancel at random moments: while waiting, while holding, while giving back.
        while any(not t.done() for t in tasks):
            assert time.monotonic() < deadline, "the storm did not end"
            await asyncio.sleep(rng.random() * 0.002)
            for t in rng.sample(tasks, 40):
                if not t.done() and t.cancel():
                    cancelled += 1
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert holding == 0
        was_cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert was_cancelled > 500  # many were cut at some point
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        await asyncio.sleep(0.1)  # let returns in progress finish their upkeep
        assert_exact(pool, 3000)
        agg = pool.aggregates()
        assert agg.acquire["cancelled"].count > 0
        # the pool still works, with all 4 connections
        conns = [await pool.getconn(timeout=5) for _ in range(4)]
        for c in conns:
            await pool.putconn(c)


def test_thread_storm_is_fair_and_loses_no_wakeup(dsn):
    threads_n, rounds = 200, 5
    with ConnectionPool(dsn, min_size=4, max_size=4, name="thread-storm", open=True) as pool:
        pool.wait()
        waits: dict[int, list[float]] = {i: [] for i in range(threads_n)}
        barrier = threading.Barrier(threads_n)

        def worker(i: int) -> None:
            barrier.wait()
            for _ in range(rounds):
                t0 = time.perf_counter()
                with pool.connection(timeout=60) as conn:
                    waits[i].append(time.perf_counter() - t0)
                    conn.execute("SELECT 1")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a thread never got its connection"
        assert_exact(pool, threads_n * rounds)
        per_thread = [sum(w) for w in waits.values()]
        assert all(len(w) == rounds for w in waits.values())
        # FIFO: every thread waited about as long in total; no one starved
        mean = statistics.mean(per_thread)
        assert max(per_thread) < 2.5 * mean, (max(per_thread), mean)
        jain = sum(per_thread) ** 2 / (len(per_thread) * sum(x * x for x in per_thread))
        assert jain > 0.8, jain
