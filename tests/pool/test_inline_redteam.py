"""Attacks on the fast paths inlined into connection() blocks and the deferred hold times.

Each test here either found a fault in commit 2006668 (the inlined block entry and
exit, `BasePool._holds`, `_idle_ran_out`) and now guards its fix, or tried an attack
that found nothing and is kept so that it keeps finding nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool, PoolClosed

from ..acompat import wait_until

pytestmark = pytest.mark.db


# --- the switch: what turns the inlined paths on and off ---


@contextlib.contextmanager
def _without_getconn(pool: Any) -> Iterator[None]:
    """Fail the test if a block goes to getconn() (the general path) meanwhile."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the block took getconn(), not the inlined path")

    pool.getconn = refused
    try:
        yield
    finally:
        del pool.getconn


def test_a_pool_opened_by_its_with_statement_takes_the_inlined_paths(dsn):
    # `with ConnectionPool(dsn) as pool:` (the form psycopg_pool's documentation
    # shows) opens the pool in the constructor with the implicit-open warning owed,
    # then the with statement cancels that warning. The switch must follow, or every
    # block of such a pool goes through getconn()/putconn() for good.
    with ConnectionPool(dsn, min_size=1, name="red5-with") as pool:
        assert not pool._open_implicit  # no warning owed any more ...
        assert pool._fast_borrow  # ... so nothing keeps the inlined paths off
        wait_until(lambda: pool.snapshot().idle == 1, timeout=30)
        with _without_getconn(pool), pool.connection() as conn:
            assert pool._out[conn] is not None


async def test_an_async_pool_opened_by_its_with_statement_takes_the_inlined_paths(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, name="red5-awith") as pool:
        assert not pool._open_implicit
        assert pool._fast_borrow
        for _ in range(1000):  # bounded: 10 s
            if pool.snapshot().idle == 1:
                break
            await asyncio.sleep(0.01)
        with _without_getconn(pool):
            async with pool.connection() as conn:
                assert pool._out[conn] is not None


# --- threads racing one block ---


def _enter_and_leave(block, start: threading.Barrier, entered: list[object]) -> None:
    """Enter *block* a few times (refusals are expected), noting each connection got."""
    start.wait()
    for _ in range(3):  # again: an entry may race the previous exit
        try:
            with block as conn:
                entered.append(conn)
        except RuntimeError:  # refused: the context is open in another thread
            pass


def test_one_block_entered_by_two_threads_lends_one_connection(dsn):
    # A connection() context entered while it is open must be refused: a second
    # entry that also got a connection would overwrite the first lending, and that
    # connection would never come back. The inlined entry takes the connection
    # between the test "is it open?" and the store that says so: threads preempted
    # every microsecond both pass the test and both borrow. An exit racing the next
    # entry must also end its own lending, not the one the entry stores.
    rounds, nthreads = 400, 4
    with ConnectionPool(dsn, min_size=nthreads, name="red5-shared") as pool:
        pool.wait()
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for _ in range(rounds):
                block = pool.connection()
                start = threading.Barrier(nthreads, timeout=30)
                entered: list[object] = []
                threads = [
                    threading.Thread(target=_enter_and_leave, args=(block, start, entered))
                    for _ in range(nthreads)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                    assert not t.is_alive()
                assert entered  # someone got in
                snap = pool.snapshot()
                # Every connection lent came back: none is left checked out.
                assert (snap.used, snap.idle) == (0, nthreads), f"{len(entered)} entries"
        finally:
            sys.setswitchinterval(old_interval)


# --- the shrink rule: `_idle_ran_out` in place of the fewest idle seen ---


def test_max_idle_shrinks_as_psycopg_pool_does(dsn):
    # psycopg_pool's rule, run side by side with the real psycopg_pool: at each
    # max_idle tick, close one idle connection if the pool is above min_size and the
    # idle list never ran out since the previous tick. Both pools see the same random
    # checkouts, returns and ticks (the ticks called directly; max_idle is an hour),
    # half the poolwatch checkouts through inlined connection() blocks.
    import random

    import psycopg_pool

    rng = random.Random(5)
    size = 4
    ref = psycopg_pool.ConnectionPool(dsn, min_size=size, max_idle=3600, open=True)
    ours = ConnectionPool(dsn, min_size=size, max_idle=3600, name="red5-shrink", open=True)
    with ref, ours:
        ref.wait()
        ours.wait()
        ref.resize(1, size)  # above min_size: the ticks may shrink
        ours.resize(1, size)
        held: list[tuple[object, object]] = []  # (psycopg_pool's, ours: a block or a conn)
        shrinks = kept = 0
        for step in range(400):
            ref_idle = len(ref._pool)
            assert ours.snapshot().idle == ref_idle, f"step {step}"
            assert ours._nconns == ref._nconns, f"step {step}"
            action = rng.random()
            if action < 0.45 and ref_idle:
                if rng.random() < 0.5:
                    block = ours.connection()
                    block.__enter__()
                    held.append((ref.getconn(), block))
                else:
                    held.append((ref.getconn(), ours.getconn()))
            elif action < 0.85 and held:
                ref_conn, ours_side = held.pop(rng.randrange(len(held)))
                ref.putconn(ref_conn)
                if isinstance(ours_side, psycopg.Connection):
                    ours.putconn(ours_side)
                else:
                    ours_side.__exit__(None, None, None)
            else:
                before = ref._nconns
                ref._shrink_pool()
                ours._shrink_pool()
                assert ours._nconns == ref._nconns, f"step {step}"
                shrinks += ref._nconns < before
                kept += ref._nconns == before
            if ref._nconns == 1 and not held:  # grow back (by a resize) to go on shrinking
                ref.resize(size, size)
                ours.resize(size, size)
                ref.wait()
                ours.wait()
                ref.resize(1, size)
                ours.resize(1, size)
        for ref_conn, ours_side in held:
            ref.putconn(ref_conn)
            if isinstance(ours_side, psycopg.Connection):
                ours.putconn(ours_side)
            else:
                ours_side.__exit__(None, None, None)
        assert shrinks > 5 and kept > 5  # both outcomes were exercised


def test_the_implicit_open_warning_is_given_by_the_first_block(dsn):
    # A pool opened by its constructor without open=... owes a deprecation warning at
    # its first use: an inlined block entry must not take the connection silently.
    pool = ConnectionPool(dsn, min_size=1, name="red5-implicit")
    try:
        wait_until(lambda: pool.snapshot().idle == 1, timeout=30)
        assert not pool._fast_borrow
        with pytest.warns(DeprecationWarning, match="'open' parameter"):
            with pool.connection():
                pass
        assert pool._fast_borrow  # owed no more: the inlined paths are back
        with _without_getconn(pool), pool.connection() as conn:
            assert pool._out[conn] is not None
    finally:
        pool.close()


# --- wait() ---


def test_two_waits_for_the_pool_to_fill_both_return(dsn):
    # Each wait() stored its own event in the one slot the returns and new connections
    # set: the second replaced the first, whose wait() then timed out (and closed the
    # pool) although the pool was full; and the first to finish turned the inlined
    # paths back on while the other still waited. Slow connections (a configure
    # callback that sleeps) make both waits start before the pool fills.
    def slow_configure(conn: psycopg.Connection) -> None:
        time.sleep(0.3)

    with ConnectionPool(
        dsn, min_size=3, num_workers=1, configure=slow_configure, name="red5-waits", open=True
    ) as pool:
        errors: list[BaseException] = []
        started = threading.Barrier(2, timeout=30)

        def wait_for_full() -> None:
            started.wait()
            try:
                pool.wait(timeout=20)
            except BaseException as ex:  # reported below
                errors.append(ex)

        threads = [threading.Thread(target=wait_for_full) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert errors == []
        assert not pool.closed
        assert pool.snapshot().idle == 3
        assert pool._fast_borrow  # nobody waits any more


# --- blocks racing resize, drain, readers and close ---


class _Lending:
    """Which worker holds which connection, by the workers' own account."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: dict[int, int] = {}
        self.double: list[str] = []
        self.not_idle: list[str] = []
        self.checkouts = 0

    def took(self, conn: psycopg.Connection, me: int) -> None:
        status = conn.pgconn.transaction_status
        with self.lock:
            self.checkouts += 1
            other = self.holder.setdefault(id(conn), me)
            if other != me:
                self.double.append(f"{conn} lent to {me} while {other} held it")
            if status != psycopg.pq.TransactionStatus.IDLE:
                self.not_idle.append(f"{conn} lent in transaction status {status}")

    def gives_back(self, conn: psycopg.Connection) -> None:
        with self.lock:
            del self.holder[id(conn)]


def _borrow_often(pool: ConnectionPool, lending: _Lending, me: int, ops: int) -> None:
    for i in range(ops):
        try:
            if i % 3:
                with pool.connection(timeout=60) as conn:
                    lending.took(conn, me)
                    if i % 5 == 1:
                        conn.execute("SELECT 1")  # a transaction left open: committed on exit
                    lending.gives_back(conn)
            else:
                conn = pool.getconn(timeout=60)
                lending.took(conn, me)
                lending.gives_back(conn)
                pool.putconn(conn)
        except PoolClosed:
            return  # closed under this worker: its part is over


def _run_workers(
    pool: ConnectionPool, lending: _Lending, n: int, ops: int
) -> list[threading.Thread]:
    workers = [
        threading.Thread(target=_borrow_often, args=(pool, lending, me, ops)) for me in range(n)
    ]
    for t in workers:
        t.start()
    return workers


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(120)
        assert not t.is_alive()


def test_blocks_racing_resize_drain_readers_and_close_lose_nothing(dsn):
    # Workers preempted every microsecond take and give back (most through inlined
    # blocks) while another thread resizes, drains and reads the pool, then closes
    # it under them. No connection may be lent twice or lent in a transaction, every
    # checkout must be counted once in the use histogram, the used seconds must never
    # go back, and after the close nothing may stay checked out or open.
    nworkers, ops = 6, 150
    pool = ConnectionPool(dsn, min_size=2, max_size=4, timeout=60, name="red5-chaos", open=False)
    pool.open(wait=True, timeout=60)
    lending = _Lending()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = _run_workers(pool, lending, nworkers, ops)
        used_seen = 0.0
        for round_ in range(30):
            pool.resize(*((1, 2) if round_ % 2 else (2, 4)))
            if round_ % 5 == 0:
                pool.drain()
            used = pool.snapshot().used_seconds_total
            assert used >= used_seen  # never backwards
            used_seen = used
            pool.aggregates()
            pool.get_stats()
            time.sleep(0.005)
        _join(workers)
        agg = pool.aggregates()
        snap = pool.snapshot()
        assert lending.double == [] and lending.not_idle == []
        assert lending.checkouts == nworkers * ops
        assert agg.use.count == lending.checkouts
        assert agg.acquire["ok"].count == lending.checkouts
        assert (snap.used, snap.waiting) == (0, 0)
        assert snap.used_seconds_total >= used_seen

        # Now closed under a second round of workers (far more work than they can do).
        workers = _run_workers(pool, lending, nworkers, 100_000)
        wait_until(lambda: lending.checkouts > nworkers * ops + 200, timeout=60)
        pool.close()
        _join(workers)
    finally:
        sys.setswitchinterval(old_interval)
        pool.close()
    assert lending.double == [] and lending.not_idle == []
    assert lending.holder == {}
    agg = pool.aggregates()
    snap = pool.snapshot()
    assert agg.use.count == lending.checkouts  # every checkout ended, and counted once
    assert (snap.size, snap.idle, snap.used) == (0, 0, 0)
    assert pool._out == {}


async def test_two_async_waits_for_the_pool_to_fill_both_return(dsn):
    async def slow_configure(conn: psycopg.AsyncConnection) -> None:
        await asyncio.sleep(0.3)

    async with AsyncConnectionPool(
        dsn, min_size=3, num_workers=1, configure=slow_configure, name="red5-awaits", open=False
    ) as pool:
        waits = [asyncio.ensure_future(pool.wait(timeout=20)) for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*waits), 60)  # a PoolTimeout fails the test
        assert not pool.closed
        assert pool.snapshot().idle == 3
        assert pool._fast_borrow and pool._full_waits == []
