"""Counters stay exact under any interleaving: a stress test with preemption forced.

`sys.setswitchinterval(1e-6)` makes CPython switch threads every microsecond or so,
between almost any two bytecodes: an update done as a read-modify-write outside the
pool's lock (``x += 1`` on an attribute, a histogram bucket, a float sum) would lose
increments. Every thread keeps its own truth (its requests, its hold and wait times,
its forced waits); at the end every counter must equal it exactly, in the pool's
aggregates, in psycopg_pool's `get_stats()` keys and in the Prometheus exposition.

What preemption can and cannot show: CPython with a GIL switches threads only at
calls and backward jumps, so a bare ``x += 1`` cannot be torn there, but an update
that calls something between its read and its write can (``area += len(out) * dt``:
moving the used-seconds update of `putconn` out of the lock makes this test fail
at once). Free-threaded CPython can tear both, which is why the pool's Python code
relies on no GIL atomicity for its state: every read-modify-write of it is done under
one `threading.Lock` (see `BasePool`). The compiled sync blocks (`_hot.c`) do rely on
the GIL, and are not built without one; the sync test runs with them and without.
The test is about counts: no timing is asserted.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.exporter.app import Exporter

from ..acompat import wait_until

pytestmark = pytest.mark.db

SIZE = 4
THREADS = 16
OPS = 150  # per worker
FORCED_ROUNDS = 10
FORCED_WAITERS = 6


@dataclass
class Truth:
    """What the workers did, counted by themselves (one per worker, summed at the end)."""

    requests: int = 0
    held: float = 0.0  # from getconn() returning to putconn() being called
    spans: float = 0.0  # from getconn() called to putconn() returned: encloses the use
    asked: float = 0.0  # from getconn() called to it returning: encloses the wait

    def record(self, called: float, got: float, done: float, returned: float) -> None:
        """One request, timed around the pool's calls: getconn() (or the block's entry)
        *called* and returning (*got*), the connection given back from *done* until
        *returned*."""
        self.requests += 1
        self.asked += got - called
        self.held += done - got
        self.spans += returned - called

    def add(self, other: Truth) -> None:
        self.requests += other.requests
        self.held += other.held
        self.spans += other.spans
        self.asked += other.asked


def _one_sync(pool: ConnectionPool, truth: Truth, i: int) -> None:
    clock = time.monotonic  # the pool's clock: its intervals nest inside ours exactly
    if i % 2:
        # Every other request in a connection() block, whose entry and exit have their
        # own inlined fast paths.
        t0 = clock()
        with pool.connection() as conn:
            t1 = clock()
            if i % 10 == 1:
                conn.execute("SELECT 1")
            t2 = clock()
        t3 = clock()
        truth.record(t0, t1, t2, t3)
        return
    t0 = clock()
    conn = pool.getconn()
    t1 = clock()
    if i % 10 == 0:
        conn.execute("SELECT 1")  # real I/O now and then: the GIL is released, holds grow
    t2 = clock()
    pool.putconn(conn)
    t3 = clock()
    truth.record(t0, t1, t2, t3)


def _exposition(pool: ConnectionPool | AsyncConnectionPool) -> dict[tuple[str, str], float]:
    """(sample name, outcome label) -> value, from the Prometheus text the exporter renders."""
    exporter = Exporter([pool], registry=CollectorRegistry(), include_registry=False)
    text = exporter.metrics_text(openmetrics=False)
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pool") == pool.name and "le" not in s.labels:
                out[(s.name, s.labels.get("outcome", ""))] = s.value
            elif s.labels.get("pool") == pool.name and s.labels["le"] == "+Inf":
                out[(s.name + "{+Inf}", s.labels.get("outcome", ""))] = s.value
    return out


def _assert_exact(
    pool: ConnectionPool | AsyncConnectionPool, truth: Truth, forced_waits: int
) -> None:
    agg = pool.aggregates()
    stats = pool.get_stats()
    snap = pool.snapshot()
    n = truth.requests
    # Every request counted once, every return once, in every view.
    assert agg.requests == n
    assert agg.acquire["ok"].count == n
    assert sum(h.count for h in agg.acquire.values()) == n  # no failure, nothing elsewhere
    assert agg.use.count == n
    assert stats["requests_num"] == n
    assert stats.get("requests_errors", 0) == 0 and stats.get("returns_bad", 0) == 0
    # Waits: at least every forced one, at most one per request; the same in every view.
    assert forced_waits <= agg.waits <= n
    assert stats["requests_queued"] == agg.waits
    # Times: the pool's measures lie inside the windows the workers timed around them.
    assert 0.0 <= agg.queued_wait_seconds <= truth.asked
    assert truth.held <= agg.use.sum <= truth.spans
    # The used-seconds integral is the sum of the uses, nothing lost or added.
    assert math.isclose(snap.used_seconds_total, agg.use.sum, rel_tol=1e-9, abs_tol=1e-6)
    assert stats["usage_ms"] == int(1000.0 * agg.use.sum)
    # All back: nothing used, nobody waiting, the pool whole.
    assert (snap.size, snap.idle, snap.used, snap.waiting) == (SIZE, SIZE, 0, 0)
    # The exposition says the same.
    m = _exposition(pool)
    assert m[("poolwatch_acquire_seconds_count", "ok")] == n
    assert m[("poolwatch_acquire_seconds_bucket{+Inf}", "ok")] == n
    assert m[("poolwatch_use_seconds_count", "")] == n
    assert m[("poolwatch_waits_total", "")] == agg.waits
    assert math.isclose(
        m[("poolwatch_used_connection_seconds_total", "")], agg.use.sum, abs_tol=1e-3
    )


def _forced_waits_sync(pool: ConnectionPool, truth: Truth) -> int:
    """Rounds in which every connection is held while FORCED_WAITERS requests queue."""
    for _ in range(FORCED_ROUNDS):
        held = [pool.getconn() for _ in range(SIZE)]
        truth.requests += SIZE
        mine = [Truth() for _ in range(FORCED_WAITERS)]
        threads = [threading.Thread(target=_one_sync, args=(pool, t, 1), daemon=True) for t in mine]
        for t in threads:
            t.start()
        wait_until(lambda: pool.snapshot().waiting == FORCED_WAITERS, timeout=60)
        for conn in held:
            pool.putconn(conn)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        for t in mine:
            truth.add(t)
    return FORCED_ROUNDS * FORCED_WAITERS


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-blocks", "python-blocks"])
def test_counters_are_exact_with_threads_preempted_every_microsecond(dsn, preempt_often, compiled):
    with ConnectionPool(
        dsn, min_size=SIZE, name="exact-sync", timeout=60, kwargs={"autocommit": True}
    ) as pool:
        assert pool._desk is not None, "the compiled blocks (_hot.c) are not built"
        if not compiled:
            pool._desk = None  # the Python blocks, which take the lock
        pool.wait(timeout=60)
        truths = [Truth() for _ in range(THREADS)]
        barrier = threading.Barrier(THREADS)

        def worker(truth: Truth) -> None:
            barrier.wait(timeout=60)
            for i in range(OPS):
                _one_sync(pool, truth, i)

        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in truths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive(), "a worker did not finish"
        truth = Truth()
        for t in truths:
            truth.add(t)
        assert truth.requests == THREADS * OPS
        forced = _forced_waits_sync(pool, truth)
        _assert_exact(pool, truth, forced)


async def _one_async(pool: AsyncConnectionPool, truth: Truth, i: int) -> None:
    clock = time.monotonic  # the pool's clock: its intervals nest inside ours exactly
    if i % 2:
        t0 = clock()
        async with pool.connection() as conn:
            t1 = clock()
            if i % 10 == 1:
                await conn.execute("SELECT 1")
            t2 = clock()
        t3 = clock()
        truth.record(t0, t1, t2, t3)
        return
    t0 = clock()
    conn = await pool.getconn()
    t1 = clock()
    if i % 10 == 0:
        await conn.execute("SELECT 1")
    t2 = clock()
    await pool.putconn(conn)
    t3 = clock()
    truth.record(t0, t1, t2, t3)


async def _tasks(pool: AsyncConnectionPool, truths: list[Truth]) -> None:
    async def worker(truth: Truth) -> None:
        for i in range(OPS):
            await _one_async(pool, truth, i)

    await asyncio.wait_for(asyncio.gather(*(worker(t) for t in truths)), 120)


async def test_async_counters_are_exact_from_tasks_on_several_loops(dsn, preempt_often):
    """Tasks on the pool's loop and on three other threads' loops share one async pool."""
    async with AsyncConnectionPool(
        dsn, min_size=SIZE, name="exact-async", timeout=60, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait(timeout=60)
        here = [Truth() for _ in range(8)]
        elsewhere = [[Truth() for _ in range(4)] for _ in range(3)]
        threads = [
            threading.Thread(target=asyncio.run, args=(_tasks(pool, ts),), daemon=True)
            for ts in elsewhere
        ]
        for t in threads:
            t.start()
        await _tasks(pool, here)
        for t in threads:
            await asyncio.to_thread(t.join, 120)
            assert not t.is_alive(), "a thread's event loop did not finish"
        truth = Truth()
        for t in [*here, *(t for ts in elsewhere for t in ts)]:
            truth.add(t)
        assert truth.requests == (8 + 3 * 4) * OPS

        forced = 0
        for _ in range(FORCED_ROUNDS):
            held = [await pool.getconn() for _ in range(SIZE)]
            truth.requests += SIZE
            mine = [Truth() for _ in range(FORCED_WAITERS)]
            tasks = [asyncio.create_task(_one_async(pool, t, 1)) for t in mine]
            deadline = time.monotonic() + 60
            while pool.snapshot().waiting < FORCED_WAITERS:  # bounded: 60 s
                assert time.monotonic() < deadline, "the forced waits did not queue"
                await asyncio.sleep(0.005)
            for conn in held:
                await pool.putconn(conn)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            for t in mine:
                truth.add(t)
            forced += FORCED_WAITERS
        _assert_exact(pool, truth, forced)
