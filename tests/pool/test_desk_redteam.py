"""Red-team attacks on what the compiled blocks' desk keeps for the pool: the lending
token as the connection's entry in _out, the expiry read at the take, the hold-time
buckets, ran_out and surplus. Each test is one attack, run against the compiled blocks
and against the Python ones (the `mode` fixture). Two found defects, now guarded: a
pool class computing _max_size (the desk copies it), and one whose _idle_put is
Python code (the give-back calls it inside its critical section)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from psycopg.pq import TransactionStatus

from poolwatch import ConnectionPool, NullConnectionPool, PoolTimeout
from poolwatch.pool import pool as sync_pool

pytestmark = pytest.mark.db


@pytest.fixture(params=["compiled", "python"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(sync_pool, "_DESK", None)
    else:
        assert sync_pool._DESK is not None
    return str(request.param)


def _check_mode(p: Any, mode: str) -> None:
    assert (p._desk is not None) == (mode == "compiled")


def _wait_closed(p: Any, n: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if p.aggregates().closed >= n:
            return
        time.sleep(0.02)


# 1. Given back during the block (close_returns), lent again, then the first exit.
def test_close_returns_then_relent_then_stale_exit(dsn, mode):
    with ConnectionPool(dsn, min_size=1, max_size=1, close_returns=True, name="rt-cr") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        b1 = p.connection()
        c1 = b1.__enter__()
        c1.close()  # given back to the pool
        assert c1 not in p._out and not c1.closed
        b2 = p.connection()
        c2 = b2.__enter__()
        assert c2 is c1
        c2.execute("SELECT 1")  # opens a transaction (not autocommit)
        assert c2.pgconn.transaction_status == TransactionStatus.INTRANS
        token2 = p._out[c2]
        # The stale block ends with an error: it must neither roll back b2's
        # transaction nor give b2's connection back.
        b1.__exit__(ValueError, ValueError("x"), None)
        assert p._out.get(c2) is token2
        assert c2.pgconn.transaction_status == TransactionStatus.INTRANS
        b1.__exit__(None, None, None)  # exiting twice: nothing
        assert p._out.get(c2) is token2
        b2.__exit__(None, None, None)
        assert c2 not in p._out and list(p._idle) == [c2]
        agg = p.aggregates()
        assert agg.requests == 2
        assert agg.use.count == 2
        assert agg.acquire["ok"].count == 2


# 2. putconn() on a block's connection, taken by getconn() elsewhere, then the exit.
def test_putconn_inside_block_then_getconn_then_exit(dsn, mode):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="rt-put") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        with p.connection() as c1:
            p.putconn(c1)
            c2 = p.getconn()
            assert c2 is c1
        # The block's exit ran: c2 must still be out, lent to us.
        assert c2 in p._out
        assert len(p._idle) == 0
        p.putconn(c2)
        assert list(p._idle) == [c2]
        agg = p.aggregates()
        assert (agg.requests, agg.use.count) == (2, 2)


# 3. A reused block: compiled enter+exit, then an enter through Python (a waiter), then
# its exit: the hold time must be the second lending's, not since the first take.
def test_reused_block_python_enter_then_exit_counts_its_own_hold(dsn, mode):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="rt-reuse") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        b = p.connection()
        with b:
            pass
        time.sleep(0.4)
        other = p.getconn()
        t = threading.Thread(target=lambda: (time.sleep(0.3), p.putconn(other)))
        t.start()
        t0 = time.monotonic()
        with b as conn:  # waits: Python enter (hand-off)
            t1 = time.monotonic()
            assert conn is other
        t2 = time.monotonic()
        t.join()
        agg = p.aggregates()
        assert agg.use.count == 3
        # b's two holds were ~0; other's ~0.3 s. Nothing near 0.7 s.
        assert agg.use.sum <= (t2 - t0) + 0.05, agg.use.sum
        assert t1 - t0 >= 0.25
        # and then a compiled enter again on the same block
        with b:
            pass
        assert p.aggregates().use.count == 4
        assert list(p._idle) == [other]


# 3b. Reused block whose Python enter failed (timeout): the next use must still count right.
def test_reused_block_after_failed_enter(dsn, mode):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="rt-reuse2", timeout=0.2) as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        b = p.connection(0.1)
        with b:
            pass
        other = p.getconn()
        with pytest.raises(PoolTimeout):
            b.__enter__()
        p.putconn(other)
        with b as c:
            assert c is other
        agg = p.aggregates()
        assert agg.use.count == 3
        assert agg.requests == 4
        assert list(p._idle) == [other] and not p._out


# 4. drain() from another thread during blocks: every connection lent before the drain
# is retired at its exit, never put back idle.
def test_drain_during_block_retires_the_connection(dsn, mode):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="rt-drain") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        with p.connection() as c:
            t = threading.Thread(target=p.drain)
            t.start()
            t.join()
        assert c not in p._idle
        assert c not in p._out
        p.wait(timeout=30)
        # a block after the drain, on a new connection, goes back idle
        with p.connection() as c2:
            assert c2 is not c
        assert c2 in p._idle


# 5. Expiry during the block (small max_lifetime): retired at the exit.
def test_connection_expiring_during_block_is_retired(dsn, mode):
    with ConnectionPool(dsn, min_size=1, max_size=1, max_lifetime=1.0, name="rt-exp") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        # take it while fresh
        with p.connection() as c:
            assert c._expire_at > time.monotonic()
            time.sleep(max(0.0, c._expire_at - time.monotonic()) + 0.05)
        assert c not in p._idle and c not in p._out
        lt = p.aggregates().lifetime
        assert lt["max_lifetime"].count == 1


# 6. resize() down while blocks are out in several threads, preempting often.
def test_resize_down_with_blocks_out_in_threads(dsn, mode, preempt_often):
    with ConnectionPool(dsn, min_size=4, max_size=4, name="rt-resize") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        stop = time.monotonic() + 1.5
        errors: list[BaseException] = []
        count = [0] * 4

        def worker(i: int) -> None:
            try:
                n = 0
                while time.monotonic() < stop and n < 3000:
                    with p.connection(timeout=10):
                        n += 1
                count[i] = n
            except BaseException as ex:
                errors.append(ex)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        p.resize(1, 2)
        for t in ts:
            t.join(timeout=30)
        assert not errors
        snap = p.snapshot()
        assert snap.size <= 2, snap
        assert snap.idle <= 2
        assert snap.used == 0
        agg = p.aggregates()
        assert agg.use.count == sum(count)
        assert agg.requests == sum(count)


# 7. Metrics exactness across threads, no reader until the end, with exceptions,
# a busy lock now and then and a pool smaller than the threads (waiters).
def test_metrics_exact_after_many_blocks_across_threads(dsn, mode, preempt_often):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="rt-exact") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        nthreads, nblocks = 4, 1500
        spans: list[list[float]] = [[] for _ in range(nthreads)]
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                for k in range(nblocks):
                    a = time.monotonic()
                    try:
                        with p.connection(timeout=10):
                            if k % 97 == 0:
                                raise KeyError(k)
                    except KeyError:
                        pass
                    spans[i].append(time.monotonic() - a)
            except BaseException as ex:
                errors.append(ex)

        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        t1 = time.monotonic()
        assert not errors
        total = nthreads * nblocks
        agg = p.aggregates()
        assert agg.requests == total
        assert agg.acquire["ok"].count == total
        assert agg.use.count == total
        assert agg.use.sum <= sum(sum(s) for s in spans) + 1e-6
        snap = p.snapshot()
        assert (snap.used, snap.idle, snap.size) == (0, 2, 2)
        assert abs(snap.used_seconds_total - agg.use.sum) < 1e-6 + 1e-9 * total, (
            snap.used_seconds_total,
            agg.use.sum,
        )
        assert snap.used_seconds_total <= 2 * (t1 - t0)
        st = p.get_stats()
        assert st["requests_num"] == total


# 8. max_idle shrink with no reader between ticks.
def test_max_idle_shrink_no_reader(dsn, mode):
    with ConnectionPool(dsn, min_size=3, max_size=3, max_idle=3600, name="rt-idle") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        p.resize(1, 3)
        # Make every period run out until now: take all three at once.
        with p.connection(), p.connection(), p.connection():
            pass
        p._shrink_pool()  # ran out: nothing closed; a new period starts
        assert p._nconns == 3
        # A period where the idle list never runs out: one closes.
        with p.connection():
            pass
        p._shrink_pool()
        assert p._nconns == 2
        # A period where it does run out (2 blocks on 2 idle), no reader.
        with p.connection(), p.connection():
            pass
        p._shrink_pool()
        assert p._nconns == 2
        # Then a whole period with idle: one closes.
        p._shrink_pool()
        assert p._nconns == 1


# 9. NullConnectionPool blocks: counted exactly, every connection closed.
def test_null_pool_blocks(dsn):
    with NullConnectionPool(dsn, max_size=2, name="rt-null") as p:
        for _ in range(5):
            with p.connection() as c:
                c.execute("SELECT 1")
        assert p._nconns == 0
        agg = p.aggregates()
        assert (agg.requests, agg.use.count) == (5, 5)
        assert not p._out and not p._idle


# 10. A pool subclass whose _max_size is a property that changes without resize():
# the compiled exit (desk.surplus) and the Python exit (live read) must agree.
class _DynamicMaxPool(ConnectionPool[Any]):
    limit: int | None = None

    @property
    def _max_size(self) -> int:
        lim = self.__dict__.get("limit")
        return lim if lim is not None else self.__dict__["_mx"]

    @_max_size.setter
    def _max_size(self, value: int) -> None:
        self.__dict__["_mx"] = value


def test_property_pool_dynamic_max_size(dsn, mode):
    with _DynamicMaxPool(dsn, min_size=2, max_size=2, name="rt-dyn") as p:
        p.wait(timeout=30)
        assert p._desk is None  # refused: the desk would copy _max_size, which moves
        with p.connection(), p.connection():
            assert p._nconns == 2
            p.limit = 1  # now one too many
        # The Python exit reads _nconns > _max_size live and closes one.
        assert p._nconns == 1, (mode, p._nconns, len(p._idle))


# 11. fork() with a compiled block open: the child's exit touches nothing; a block
# reused in the child is refused; the parent goes on.
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_fork_with_block_open(dsn, mode):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="rt-fork") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        reused = p.connection()
        with reused:
            pass
        b = p.connection()
        c = b.__enter__()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                b.__exit__(None, None, None)
                if p._idle or p._out:
                    code = 3
                try:
                    with reused:
                        code = 4
                except Exception as ex:  # PoolClosed
                    if type(ex).__name__ != "PoolClosed":
                        code = 5
                try:
                    with p.connection():
                        code = 6
                except Exception as ex:
                    if type(ex).__name__ != "PoolClosed":
                        code = 7
            except BaseException:
                code = 9
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        c.execute("SELECT 1")
        b.__exit__(None, None, None)
        with reused:
            pass
        agg = p.aggregates()
        assert agg.use.count == 3 and agg.requests == 3
        assert len(p._idle) == 2


# 12. close() racing blocks in threads: nothing left idle in a closed pool, all closed.
def test_close_racing_blocks(dsn, mode, preempt_often):
    p = ConnectionPool(dsn, min_size=3, max_size=3, name="rt-close", open=True)
    p.wait(timeout=30)
    _check_mode(p, mode)
    stop = threading.Event()
    borrows = [p.connection() for _ in range(3)]

    def worker(i: int) -> None:
        b = borrows[i]
        n = 0
        while not stop.is_set() and n < 100000:
            n += 1
            try:
                with b:
                    pass
            except Exception:
                return

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    p.close()
    stop.set()
    for t in ts:
        t.join(timeout=30)
    assert not p._idle, list(p._idle)
    assert not p._out
    assert p._nconns == 0, p._nconns


# 13. Call-site tracking switched on and off while blocks run in threads (desk.fast
# flips under the blocks): counts stay exact, every connection comes back.
def test_fast_switch_flipping_during_blocks(dsn, mode, preempt_often):
    with ConnectionPool(dsn, min_size=2, max_size=2, name="rt-flip") as p:
        p.wait(timeout=30)
        _check_mode(p, mode)
        nthreads, nblocks = 3, 1000
        errors: list[BaseException] = []
        done = threading.Event()

        def worker() -> None:
            try:
                for _ in range(nblocks):
                    with p.connection(timeout=10):
                        pass
            except BaseException as ex:
                errors.append(ex)

        def flipper() -> None:
            n = 0
            while not done.is_set() and n < 2000:
                n += 1
                p.track_call_sites(lambda: "site")
                time.sleep(0.0005)
                p.track_call_sites(None)
                time.sleep(0.0005)

        ts = [threading.Thread(target=worker) for _ in range(nthreads)]
        f = threading.Thread(target=flipper)
        f.start()
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        done.set()
        f.join(timeout=30)
        assert not errors
        total = nthreads * nblocks
        agg = p.aggregates()
        assert (agg.requests, agg.acquire["ok"].count, agg.use.count) == (total,) * 3
        snap = p.snapshot()
        assert (snap.used, snap.idle, snap.size) == (0, 2, 2)
        assert not p._sites


# 14. Async pool: given back during the block (close_returns), relent, stale exit.
def test_async_close_returns_then_relent_then_stale_exit(dsn):
    import asyncio

    from poolwatch import AsyncConnectionPool

    async def main() -> None:
        async with AsyncConnectionPool(
            dsn, min_size=1, max_size=1, close_returns=True, name="rt-acr"
        ) as p:
            await p.wait(timeout=30)
            b1 = p.connection()
            c1 = await b1.__aenter__()
            await c1.close()
            b2 = p.connection()
            c2 = await b2.__aenter__()
            assert c2 is c1
            await c2.execute("SELECT 1")
            token2 = p._out[c2]
            await b1.__aexit__(ValueError, ValueError("x"), None)
            assert p._out.get(c2) is token2
            assert c2.pgconn.transaction_status == TransactionStatus.INTRANS
            await b2.__aexit__(None, None, None)
            assert list(p._idle) == [c2] and not p._out
            agg = p.aggregates()
            assert (agg.requests, agg.use.count) == (2, 2)

    asyncio.run(main())


# 15. A pool class whose _idle_put is a property returning a Python function: the
# desk calls it inside the compiled exit's critical section (Python code there), so
# another thread can take the connection between the put and the _out removal.
class _HookedPutPool(ConnectionPool[Any]):
    @property
    def _idle_put(self) -> Any:
        put = self.__dict__["_put"]

        def hooked(conn: Any) -> None:
            put(conn)
            time.sleep(0.002)  # e.g. a log call: releases the GIL

        return hooked

    @_idle_put.setter
    def _idle_put(self, value: Any) -> None:
        self.__dict__["_put"] = value


def test_pool_with_python_idle_put_keeps_lendings_intact(dsn, mode, preempt_often):
    import traceback

    with _HookedPutPool(dsn, min_size=1, max_size=1, name="rt-hook") as p:
        p.wait(timeout=30)
        assert p._desk is None  # refused: its _idle_put is Python code
        errors: list[BaseException] = []
        stop = time.monotonic() + 2.0

        def worker() -> None:
            try:
                n = 0
                while time.monotonic() < stop and n < 2000:
                    n += 1
                    with p.connection(timeout=5):
                        pass
            except BaseException as ex:
                errors.append(ex)

        ts = [threading.Thread(target=worker) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        snap = p.snapshot()
        assert not errors, "".join(traceback.format_exception(errors[0])) + repr(snap)
        assert (snap.used, snap.idle, snap.size) == (0, 1, 1), (p._desk is not None, snap)
