"""Attacks on the pool's hot paths (issue 17): hand-off, borrow tokens, used seconds.

Ground truth is what each test measures itself: which connections it holds, how many
the pool reports used or idle, and the hold times it records around each checkout.
"""

from __future__ import annotations

import asyncio
import itertools
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


# --- a request timing out at the instant a connection is handed to it ---------------

ROUNDS = 40
TIMEOUTS = (0.0005, 0.001, 0.002, 0.004)  # about as long as a hold: timeouts race hand-offs


def _assert_accounted(pool, ok: int, timeouts: int) -> None:
    agg = pool.aggregates()
    snap = pool.snapshot()
    assert ok > 0 and timeouts > 0  # both sides of the race happened
    assert agg.requests == ok + timeouts
    assert agg.acquire["ok"].count == ok
    assert agg.acquire["timeout"].count == timeouts
    assert sum(h.count for h in agg.acquire.values()) == ok + timeouts
    assert agg.use.count == ok  # every lending came back once, none twice
    assert (snap.size, snap.idle, snap.used, snap.waiting) == (1, 1, 0, 0)
    assert snap.used_seconds_total == pytest.approx(agg.use.sum, abs=1e-6)


def test_sync_timeouts_racing_hand_offs_lose_and_double_nothing(dsn):
    import sys
    import threading

    from poolwatch import PoolTimeout

    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=30)
        counts = {"ok": 0, "timeout": 0}
        lock = threading.Lock()

        def worker(k: int) -> None:
            for i in range(ROUNDS):
                try:
                    conn = pool.getconn(timeout=TIMEOUTS[(i + k) % len(TIMEOUTS)])
                except PoolTimeout:
                    with lock:
                        counts["timeout"] += 1
                    continue
                time.sleep(0.0005)
                pool.putconn(conn)
                with lock:
                    counts["ok"] += 1

        before = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        finally:
            sys.setswitchinterval(before)
        assert not any(t.is_alive() for t in threads)
        _assert_accounted(pool, counts["ok"], counts["timeout"])


async def test_async_timeouts_racing_hand_offs_lose_and_double_nothing(dsn):
    from poolwatch import PoolTimeout

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
        await pool.wait(timeout=30)
        counts = {"ok": 0, "timeout": 0}

        async def worker(k: int) -> None:
            for i in range(ROUNDS):
                try:
                    conn = await pool.getconn(timeout=TIMEOUTS[(i + k) % len(TIMEOUTS)])
                except PoolTimeout:
                    counts["timeout"] += 1
                    continue
                await asyncio.sleep(0.0005)
                await pool.putconn(conn)
                counts["ok"] += 1

        await asyncio.wait_for(asyncio.gather(*(worker(k) for k in range(6))), 120)
        _assert_accounted(pool, counts["ok"], counts["timeout"])


async def test_cross_loop_timeouts_racing_hand_offs_lose_and_double_nothing(dsn):
    import threading

    from poolwatch import PoolTimeout

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
        await pool.wait(timeout=30)
        counts = {"ok": 0, "timeout": 0}
        lock = threading.Lock()

        async def worker(k: int) -> None:
            for i in range(ROUNDS):
                try:
                    conn = await pool.getconn(timeout=TIMEOUTS[(i + k) % len(TIMEOUTS)])
                except PoolTimeout:
                    with lock:
                        counts["timeout"] += 1
                    continue
                await asyncio.sleep(0.0005)
                await pool.putconn(conn)
                with lock:
                    counts["ok"] += 1

        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        try:
            there = [
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(worker(k), other))
                for k in range(3)
            ]
            here = [worker(k) for k in range(3, 6)]
            await asyncio.wait_for(asyncio.gather(*there, *here), 120)
        finally:
            other.call_soon_threadsafe(other.stop)
            thread.join(10)
            other.close()
        _assert_accounted(pool, counts["ok"], counts["timeout"])


# --- the borrow's relend protection ---------------------------------------------------


def test_putconn_inside_the_block_then_relent_is_left_alone(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=30)
        borrow = pool.connection(timeout=5)
        with borrow as conn:
            pool.putconn(conn)  # the user gives it back by hand
            second = pool.getconn(timeout=5)
            assert second is conn
            second.execute("SELECT 1")  # opens a transaction the exit must not end
        assert second.info.transaction_status == 2  # INTRANS: left alone
        assert pool.snapshot().used == 1
        second.rollback()
        pool.putconn(second)
        # The borrow is reusable once its block ended.
        with borrow as third:
            assert third is conn
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 1)


def test_exiting_a_borrow_twice_returns_once(dsn):
    from contextlib import ExitStack

    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=30)
        borrow = pool.connection(timeout=5)
        conn = borrow.__enter__()
        borrow.__exit__(None, None, None)
        other = pool.getconn(timeout=5)  # lent again to someone else
        assert other is conn
        with ExitStack():
            borrow.__exit__(None, None, None)  # a stray second exit: must not take it
        assert pool.snapshot().used == 1
        pool.putconn(other)
        assert pool.aggregates().use.count == 2


def test_asyncio_run_twice_refuses_the_dead_loops_pool(dsn):
    from poolwatch import PoolClosed

    pool = AsyncConnectionPool(dsn, min_size=1, open=False)

    async def first() -> None:
        await pool.open()
        await pool.wait(timeout=30)
        conn = await pool.getconn(timeout=5)
        await pool.putconn(conn)

    async def second() -> None:
        with pytest.raises(PoolClosed, match="event loop"):
            await pool.getconn(timeout=5)
        with pytest.raises(PoolClosed, match="event loop"):
            async with pool.connection(timeout=5):
                pass  # pragma: no cover
        await pool.close()

    asyncio.run(first())
    asyncio.run(second())
    assert pool.snapshot().used == 0


# --- a waiter whose event loop ended while it waited ----------------------------------


async def test_hand_off_skips_a_waiter_whose_loop_ended(dsn):
    import threading

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, timeout=60) as pool:
        await pool.wait(timeout=30)
        held = await pool.getconn()
        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        orphan = asyncio.run_coroutine_threadsafe(pool.getconn(timeout=60), other)
        for _ in range(500):  # bounded: until the other loop's request is queued
            if pool.snapshot().waiting == 1:
                break
            await asyncio.sleep(0.01)
        assert pool.snapshot().waiting == 1
        # The thread's loop ends with its request still waiting: nobody can take a
        # connection there any more.
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        assert not thread.is_alive()
        other.close()
        await pool.putconn(held)
        # The connection is not lent to the dead request: it stays usable here.
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 1)
        again = await pool.getconn(timeout=5)
        assert again is held
        await pool.putconn(again)
        assert not orphan.done()  # its loop ended before it could finish


# --- used seconds under everything at once -----------------------------------------


@pytest.mark.parametrize("with_reset", [False, True])
def test_used_seconds_never_step_back_and_cover_every_hold(dsn, with_reset):
    """Checkouts, hand-offs, resets, checks, drains and resizes race a reader.

    The reader's values never go down; at the end the counter covers every hold the
    workers timed (and every reset the callback timed), and without resets it is the
    sum of the uses exactly.
    """
    import sys
    import threading

    resets: list[float] = []

    def reset(conn) -> None:
        t = time.monotonic()
        time.sleep(0.0005)
        resets.append(time.monotonic() - t)

    kwargs = {"reset": reset} if with_reset else {}
    with ConnectionPool(dsn, min_size=2, max_size=3, timeout=60, **kwargs) as pool:
        pool.wait(timeout=30)
        base = pool.snapshot().used_seconds_total
        held: list[float] = []
        readings: list[float] = []
        done = threading.Event()

        def worker() -> None:
            for i in range(30):
                conn = pool.getconn()
                t1 = time.monotonic()
                if i % 5 == 0:
                    conn.execute("SELECT 1").fetchall()
                    conn.rollback()
                t2 = time.monotonic()
                pool.putconn(conn)
                held.append(t2 - t1)

        def reader() -> None:
            for _ in range(100_000):  # bounded; stops when the workers are done
                if done.is_set():
                    break
                readings.append(pool.snapshot().used_seconds_total)

        def upkeep() -> None:
            for i in range(10):
                if done.is_set():
                    break
                pool.drain()
                pool.resize(2, 3 if i % 2 else 4)
                pool.check()
                time.sleep(0.005)

        before = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            workers = [threading.Thread(target=worker) for _ in range(5)]
            others = [threading.Thread(target=reader), threading.Thread(target=upkeep)]
            for t in workers + others:
                t.start()
            for t in workers:
                t.join(timeout=180)
            done.set()
            for t in others:
                t.join(timeout=60)
        finally:
            sys.setswitchinterval(before)
        assert not any(t.is_alive() for t in workers + others)
        for _ in range(500):  # bounded: until the last resets are over
            if pool.snapshot().used == 0:
                break
            time.sleep(0.01)
        s = pool.snapshot()
        assert s.used == 0
        assert len(readings) > 0
        assert all(b >= a for a, b in itertools.pairwise(readings))
        used = s.used_seconds_total - base
        agg = pool.aggregates()
        assert agg.use.count == 5 * 30
        assert used >= sum(held) + sum(resets) - 1e-6
        if not with_reset:
            assert used == pytest.approx(agg.use.sum, abs=1e-6)


def test_null_pool_used_seconds_are_the_uses_with_hand_offs(dsn):
    import threading

    from poolwatch import NullConnectionPool

    with NullConnectionPool(dsn, max_size=1, timeout=60) as pool:
        held: list[float] = []

        def worker() -> None:
            for _ in range(5):
                conn = pool.getconn()
                t1 = time.monotonic()
                time.sleep(0.001)
                t2 = time.monotonic()
                pool.putconn(conn)  # handed to a waiter when there is one, else closed
                held.append(t2 - t1)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        s = pool.snapshot()
        agg = pool.aggregates()
        assert (s.used, s.waiting) == (0, 0)
        assert agg.use.count == 15
        assert agg.waits > 0  # some requests were served by a hand-off
        assert s.used_seconds_total >= sum(held) - 1e-6
        assert s.used_seconds_total == pytest.approx(agg.use.sum, abs=1e-6)


async def test_cross_loop_cancel_right_after_hand_off_gives_the_connection_back(dsn):
    import threading

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, timeout=60) as pool:
        await pool.wait(timeout=30)
        held = await pool.getconn()
        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        try:
            tasks: list[asyncio.Task] = []

            async def start() -> None:
                tasks.append(asyncio.ensure_future(pool.getconn(timeout=60)))

            asyncio.run_coroutine_threadsafe(start(), other).result(10)
            for _ in range(500):  # bounded: until the other loop's request is queued
                if pool.snapshot().waiting == 1:
                    break
                await asyncio.sleep(0.01)
            assert pool.snapshot().waiting == 1
            await pool.putconn(held)  # assigned here, woken over there
            other.call_soon_threadsafe(tasks[0].cancel)  # right behind the wake-up

            async def outcome() -> str:
                try:
                    conn = await tasks[0]
                except asyncio.CancelledError:
                    return "cancelled"
                await pool.putconn(conn)  # the wake-up won: it got the connection
                return "served"

            result = asyncio.run_coroutine_threadsafe(outcome(), other).result(30)
            assert result in ("cancelled", "served")
            for _ in range(500):  # bounded: the give-back may run on the other loop
                if pool.snapshot().idle == 1:
                    break
                await asyncio.sleep(0.01)
            s = pool.snapshot()
            assert (s.used, s.idle, s.waiting) == (0, 1, 0)
        finally:
            other.call_soon_threadsafe(other.stop)
            thread.join(10)
            other.close()
