# GENERATED from test_null_pool_async.py by tools/unasync.py. DO NOT EDIT.
"""NullConnectionPool against a real PostgreSQL (sync twin: test_null_pool.py)."""

from __future__ import annotations

import pytest

from poolwatch import NullConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from ..acompat import gather, spawn, wait_until

pytestmark = pytest.mark.db


def test_defaults(dsn):
    pool = NullConnectionPool(dsn, open=False)
    assert (pool.min_size, pool.max_size) == (0, 0)
    with pytest.raises(ValueError, match="min_size = 0"):
        NullConnectionPool(dsn, min_size=1, open=False)


def test_each_request_gets_a_new_connection(dsn, pg):
    with NullConnectionPool(dsn, kwargs={"application_name": "null-new"}) as pool:
        pids = []
        for _ in range(3):
            with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
                assert pg.backends("null-new") == 1
        assert len(set(pids)) == 3
        assert pool.snapshot().size == 0
        a = pool.aggregates()
        assert a.opened == a.closed == 3
        assert pool.get_stats()["connections_num"] == 3


def test_max_size_queues_and_hands_over(dsn, pg):
    with NullConnectionPool(dsn, max_size=1, kwargs={"application_name": "null-max"}) as pool:
        held = pool.getconn()
        got = []

        def waiter():
            with pool.connection(timeout=10) as conn:
                got.append(conn)

        task = spawn(waiter)
        wait_until(lambda: pool.snapshot().waiting == 1)
        assert pg.backends("null-max") == 1
        pool.putconn(held)
        gather(task)
        assert got == [held]  # handed over, not closed and reopened
        assert pool.aggregates().opened == 1


def test_timeout_and_max_waiting(dsn):
    with NullConnectionPool(dsn, max_size=1, max_waiting=1) as pool:
        held = pool.getconn()
        with pytest.raises(PoolTimeout, match="size=1/1"):
            pool.getconn(timeout=0.2)
        served = []

        def waiter():
            with pool.connection(timeout=5) as conn:
                served.append(conn)

        task = spawn(waiter)
        wait_until(lambda: pool.snapshot().waiting == 1)
        with pytest.raises(TooManyRequests):
            pool.getconn()
        pool.putconn(held)
        gather(task)
        assert served == [held]
        assert pool.aggregates().acquire["too_many"].count == 1


def test_wait_checks_connectivity(dsn, pg):
    with NullConnectionPool(dsn) as pool:
        pool.wait(timeout=5)
        assert pool.snapshot().size == 0
    bad = NullConnectionPool(pg.dsn(port=1), open=False)
    bad.open()
    with pytest.raises(PoolTimeout, match="initialization incomplete"):
        bad.wait(timeout=0.5)
    assert bad.closed
    with pytest.raises(PoolClosed):
        bad.getconn()


def test_resize_only_changes_max(dsn):
    with NullConnectionPool(dsn, max_size=2) as pool:
        pool.resize(0, 5)
        assert pool.max_size == 5
        with pytest.raises(ValueError):
            pool.resize(1, 5)
        pool.check()  # nothing to check
