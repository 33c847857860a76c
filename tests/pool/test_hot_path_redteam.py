"""Attacks on the pool's hot paths (issue 17): hand-off, borrow tokens, used seconds.

Ground truth is what each test measures itself: which connections it holds, how many
the pool reports used or idle, and the hold times it records around each checkout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool

pytestmark = pytest.mark.db


def test_reentering_an_active_borrow_raises_and_leaks_nothing(dsn):
    with ConnectionPool(dsn, min_size=2, max_size=2) as pool:
        pool.wait(timeout=30)
        borrow = pool.connection(timeout=5)
        with borrow as first:
            with pytest.raises(RuntimeError, match="already"):
                with borrow:
                    pass  # pragma: no cover - the entry must refuse
            # The refused entry took nothing, and the first block still owns its lending.
            assert pool.snapshot().used == 1
            first.execute("SELECT 1")
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 2)


async def test_reentering_an_active_async_borrow_raises_and_leaks_nothing(dsn):
    async with AsyncConnectionPool(dsn, min_size=2, max_size=2) as pool:
        await pool.wait(timeout=30)
        borrow = pool.connection(timeout=5)
        async with borrow as first:
            with pytest.raises(RuntimeError, match="already"):
                async with borrow:
                    pass  # pragma: no cover - the entry must refuse
            assert pool.snapshot().used == 1
            await first.execute("SELECT 1")
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 2)


def test_a_borrow_can_be_used_again_after_its_block(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=30)
        borrow = pool.connection(timeout=5)
        for _ in range(3):
            with borrow as conn:
                conn.execute("SELECT 1")
            s = pool.snapshot()
            assert (s.used, s.idle) == (0, 1)


async def test_cancel_right_after_hand_off_gives_the_connection_back(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, timeout=30) as pool:
        await pool.wait(timeout=30)
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        for _ in range(200):  # bounded: until the request is queued
            if pool.snapshot().waiting == 1:
                break
            await asyncio.sleep(0.01)
        assert pool.snapshot().waiting == 1
        await pool.putconn(held)  # handed straight to the waiter, woken in this loop
        waiter.cancel()  # before the waiter ran again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        s = pool.snapshot()
        assert (s.used, s.idle, s.waiting) == (0, 1, 0)
        again = await pool.getconn(timeout=5)
        assert again is held
        await pool.putconn(again)


def test_used_seconds_equal_the_hold_times_with_hand_offs(dsn):
    """Every checkout (fast path, hand-off) adds exactly its hold time, and nothing more."""
    import threading

    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=30) as pool:
        pool.wait(timeout=30)
        base = pool.snapshot().used_seconds_total
        held = [0.0]  # getconn() returned .. putconn() called: inside each hold
        spans = [0.0]  # getconn() called .. putconn() returned: encloses each hold
        lock = threading.Lock()
        seen: list[float] = []

        def worker() -> None:
            for _ in range(20):
                t0 = time.monotonic()
                conn = pool.getconn()
                t1 = time.monotonic()
                seen.append(pool.snapshot().used_seconds_total)
                time.sleep(0.001)
                t2 = time.monotonic()
                pool.putconn(conn)
                t3 = time.monotonic()
                with lock:
                    held[0] += t2 - t1
                    spans[0] += t3 - t0

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        s = pool.snapshot()
        assert s.used == 0
        used = s.used_seconds_total - base
        assert held[0] - 1e-6 <= used <= spans[0] + 1e-6
        assert used == pytest.approx(pool.aggregates().use.sum, abs=1e-6)
