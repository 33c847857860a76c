"""The compiled fast path of sync connection() blocks (src/poolwatch/pool/_hot.c).

It must be built here (setup.py builds it on every GIL build of CPython: a missing
compiler would otherwise silently cost every block its speed), it must really be the
path a plain block takes, and it must stand aside whenever the Python code would do
something else: while another thread holds the pool lock, for connection or pool
classes that run Python code on attribute access, in a forked child, and when
POOLWATCH_PURE_PYTHON=1. Its counts and clock are the Python blocks': the state
machine and the exactness test run both (tests/faults/test_fast_state_machine.py,
tests/pool/test_exactness.py).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import sysconfig
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from poolwatch import ConnectionPool
from poolwatch.observe import Histogram
from poolwatch.pool import _compiled
from poolwatch.pool import pool as sync_pool
from poolwatch.pool.base import HOLDS_FOLD_AT

pytestmark = pytest.mark.db

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_the_extension_is_built_on_this_python():
    if FREE_THREADED:
        assert sync_pool._DESK is None  # it relies on the GIL: not built, not used
        return
    assert sync_pool._DESK is not None, "_hot.c is not built: run ./scripts/setup (needs gcc)"


@pytest.fixture
def fallbacks() -> Iterator[Counter[str]]:
    """Counts the calls the compiled blocks make to the Python ones."""
    from poolwatch.pool._hot import set_fallbacks

    calls: Counter[str] = Counter()
    enter, exit_ = sync_pool._Borrow.__enter__, sync_pool._Borrow.__exit__

    def counted_enter(block: Any) -> Any:
        calls["enter"] += 1
        return enter(block)

    def counted_exit(block: Any, *args: Any) -> Any:
        calls["exit"] += 1
        return exit_(block, *args)

    set_fallbacks(counted_enter, counted_exit)
    try:
        yield calls
    finally:
        set_fallbacks(enter, exit_)


@pytest.fixture
def pool(compiled_pool: ConnectionPool[Any]) -> ConnectionPool[Any]:
    return compiled_pool  # tests/pool/conftest.py


def test_plain_blocks_take_the_compiled_path_and_count_exactly(pool, fallbacks):
    blocks = 3 * HOLDS_FOLD_AT + 5
    before = time.monotonic()
    for i in range(blocks):
        with pool.connection() as conn:
            if i % 100 == 0:
                conn.execute("SELECT 1")
    after = time.monotonic()
    # No block went to Python. The desk counts the hold times in its own buckets,
    # however many: nothing grows, so nothing needs folding before a read.
    assert fallbacks["enter"] == 0
    assert fallbacks["exit"] == 0
    assert pool._desk.held == blocks and pool._holds == []
    agg = pool.aggregates()
    assert pool._desk.instant == 0  # the read added them to _instant
    assert pool._desk.held == 0  # and the hold times to the use histogram
    assert agg.requests == blocks
    assert agg.acquire["ok"].count == blocks
    assert agg.acquire["ok"].counts[0] == blocks  # none waited
    assert agg.use.count == blocks
    # The compiled clock is time.monotonic's: every hold lies inside our interval.
    assert 0.0 <= agg.use.sum <= after - before
    stats = pool.get_stats()
    assert stats["requests_num"] == blocks
    snap = pool.snapshot()
    assert (snap.used, snap.idle) == (0, 2)


def test_the_checkout_time_is_read_from_the_pools_clock(pool):
    for _ in range(200):
        t0 = time.monotonic()
        with pool.connection() as conn:
            t1 = time.monotonic()
            checkout = pool._out[conn]
        assert t0 <= checkout <= t1


def test_a_held_pool_lock_sends_the_block_to_python_which_waits_for_it(pool, fallbacks):
    entered = threading.Event()

    def borrower() -> None:
        with pool.connection():
            entered.set()

    with pool._lock:
        t = threading.Thread(target=borrower, daemon=True)
        t.start()
        time.sleep(0.3)
        # Taking the connection while the lock is held would break the critical
        # section of whoever holds it.
        assert not entered.is_set()
    t.join(timeout=10)
    assert entered.is_set()
    assert fallbacks["enter"] == 1
    assert pool.aggregates().requests == 1


def test_exit_with_an_exception_rolls_back_through_python(pool, fallbacks):
    with pytest.raises(ZeroDivisionError):
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
            1 / 0  # noqa: B018
    assert fallbacks["exit"] == 1
    with pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert pool.aggregates().use.count == 2


def test_an_open_transaction_is_committed_through_python(pool, fallbacks, dsn):
    with ConnectionPool(dsn, min_size=1, name="tx") as p:  # not autocommit
        p.wait(timeout=30)
        with p.connection() as conn:
            conn.execute("SELECT 1")
        assert fallbacks["exit"] == 1
        assert p.snapshot().idle == 1


def test_reference_counts_do_not_drift(pool):
    with pool.connection() as conn:
        pass
    for _ in range(50):  # warm: caches and free lists settle
        with pool.connection():
            pass
    before = (sys.getrefcount(pool), sys.getrefcount(conn), sys.getrefcount(None))
    for _ in range(2000):
        with pool.connection():
            pass
    after = (sys.getrefcount(pool), sys.getrefcount(conn), sys.getrefcount(None))
    assert after[:2] == before[:2]
    assert abs(after[2] - before[2]) < 50  # None is shared by the whole interpreter


def test_a_block_cannot_be_entered_twice_or_given_bad_arguments(pool):
    block = pool.connection()
    with block:
        with pytest.raises(RuntimeError, match="already open"):
            block.__enter__()
    with pytest.raises(TypeError, match="at most one argument"):
        pool._desk.lend(1, 2)
    with pytest.raises(TypeError, match="3 arguments"):
        block.__exit__()


class _SetattrConnection(psycopg.Connection[Any]):
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)


class _PropertyConnection(psycopg.Connection[Any]):
    @property
    def _expire_at(self) -> Any:
        return self.__dict__.get("_expires")

    @_expire_at.setter
    def _expire_at(self, value: Any) -> None:
        self.__dict__["_expires"] = value


class _PropertyPool(ConnectionPool[Any]):
    @property
    def _nconns(self) -> int:
        return int(self.__dict__.get("_n", 0))

    @_nconns.setter
    def _nconns(self, value: int) -> None:
        self.__dict__["_n"] = value


@pytest.mark.parametrize("connection_class", [_SetattrConnection, _PropertyConnection])
def test_classes_that_run_python_on_attributes_get_the_python_blocks(dsn, connection_class):
    with ConnectionPool(dsn, min_size=1, connection_class=connection_class, name="py") as p:
        assert p._desk is None
        with p.connection() as conn:
            assert isinstance(conn, connection_class)
        assert p.aggregates().requests == 1


def test_a_pool_class_with_a_property_gets_the_python_blocks(dsn):
    # The desk keeps a copy of what _nconns and _max_size say (desk.surplus), which a
    # property could change behind its back.
    with _PropertyPool(dsn, min_size=1, name="prop") as p:
        assert p._desk is None
        with p.connection():
            pass
        assert p.aggregates().use.count == 1


def test_a_resize_below_the_connections_in_use_closes_the_surplus_through_python(pool, fallbacks):
    with pool.connection():
        pass
    assert fallbacks == {}
    with pool.connection(), pool.connection():
        pool.resize(1, 1)  # the desk learns of the surplus
        assert pool._desk.surplus
    assert (pool._nconns, pool.snapshot().idle) == (1, 1)
    # Both exits went to Python: the first closed the surplus; the flag stays until
    # the next read (the snapshot above) takes it in.
    assert fallbacks["exit"] == 2 and not pool._desk.surplus


def test_a_closed_pool_refuses_through_python(dsn, fallbacks):
    p = ConnectionPool(dsn, min_size=1, name="closing", open=True)
    p.wait(timeout=30)
    p.close()
    assert p._desk.fast is False
    with pytest.raises(Exception, match="closed"):
        with p.connection():
            pass
    assert fallbacks["enter"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_drops_the_desk(pool):
    with pool.connection():
        pass
    pid = os.fork()
    if pid == 0:  # the child: its pool is closed, its blocks are the Python ones
        code = 0 if pool._desk is None else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pure_python_variable_turns_the_compiled_blocks_off(dsn):
    env = dict(os.environ, **{_compiled.PURE_PYTHON_VARIABLE: "1"})
    code = "from poolwatch.pool import pool; import sys; sys.exit(0 if pool._DESK is None else 1)"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_the_lock_is_read_as_its_byte_where_the_layout_matches():
    from poolwatch.pool import _hot

    # Before 3.13 the import checks the layout of _thread.lock and reads its byte;
    # the tests of a held lock above then exercise that read.
    assert _hot.READS_LOCK_BYTE is (sys.version_info < (3, 13))


def test_the_desk_keeps_hold_times_until_a_read_folds_them(pool):
    desk = pool._desk
    start = pool.aggregates().use  # and the desk is empty
    held = []
    for _ in range(7):
        t0 = time.monotonic()
        with pool.connection():
            pass
        held.append(time.monotonic() - t0)
    assert desk.held == 7 and pool._holds == []
    with pytest.raises(TypeError, match="list of 22 counts"):
        desk.fold_holds([0] * 3)
    with pytest.raises(TypeError, match="list of 22 counts"):
        desk.fold_holds(tuple(start.counts))
    assert desk.held == 7  # refused: nothing folded
    use = pool.aggregates().use
    assert desk.held == 0 and pool._holds == []
    assert use.count - start.count == 7
    # each hold lies inside the interval measured around its block
    assert 0.0 <= use.sum - start.sum <= sum(held) + 1e-9
    counts = [0] * 22
    assert desk.fold_holds(counts) == 0.0  # nothing left to fold
    assert counts == [0] * 22


@pytest.mark.parametrize("seed", range(3))
def test_the_desk_buckets_hold_times_as_the_histogram_does(pool, seed):
    rng = random.Random(seed)
    bounds = pool._agg.use.bounds
    # Every bound itself, just either side of it, zero, and values across the range.
    values = [0.0, 1e-9, 1e9, *bounds]
    values += [math.nextafter(b, -math.inf) for b in bounds]
    values += [math.nextafter(b, math.inf) for b in bounds]
    values += [10 ** rng.uniform(-7, 3.5) for _ in range(2000)]
    expected = Histogram(bounds)
    desk = sync_pool._DESK(pool, bounds)  # a desk of its own: the pool's stays as it is
    for value in values:
        expected.observe(value)
        desk.count_hold(value)
    counts = [0] * (len(bounds) + 1)
    seconds = desk.fold_holds(counts)
    assert counts == expected.counts
    assert math.isclose(seconds, expected.sum, rel_tol=1e-12)


def test_a_desk_refuses_bounds_out_of_order(pool):
    with pytest.raises(ValueError, match="ascending"):
        sync_pool._DESK(pool, (1.0, 0.5))
    with pytest.raises(ValueError, match="ascending"):
        sync_pool._DESK(pool, (0.5, math.nan))
    with pytest.raises(TypeError):
        sync_pool._DESK(pool, [0.5, 1.0])


def test_a_compiled_take_that_empties_the_idle_list_keeps_the_pool_from_shrinking(dsn):
    # The compiled take notes in its desk that it emptied the idle list; the max_idle
    # tick must see it even when nothing read the pool in between.
    with ConnectionPool(dsn, min_size=2, max_size=2, max_idle=3600, name="ran-out") as p:
        p.wait(timeout=30)
        p.resize(1, 2)  # above min_size: a tick may close one
        p._shrink_pool()  # a period starts with the idle list full
        with p.connection(), p.connection():
            assert p._desk.ran_out  # the second take emptied it
        p._shrink_pool()
        assert p._nconns == 2  # it ran out during the period: nothing closed
        p._shrink_pool()
        assert p._nconns == 1  # a whole period with idle connections: one closed


def test_a_desk_refuses_an_idle_put_that_is_not_the_deques_own(pool):
    # The give-back calls _idle_put inside its critical section: Python code there
    # could let another thread in (found by a red team: a lending ended twice).
    bounds = pool._agg.use.bounds
    original = pool._idle_put
    try:
        for impostor in (lambda conn: original(conn), pool._idle.extend, [].append):
            pool._idle_put = impostor
            with pytest.raises(TypeError, match="append or appendleft"):
                sync_pool._DESK(pool, bounds)
            assert _compiled.desk_for(sync_pool._DESK, pool) is None  # Python blocks
        pool._idle_put = pool._idle.appendleft
        assert sync_pool._DESK(pool, bounds) is not None
    finally:
        pool._idle_put = original
