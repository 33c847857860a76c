# GENERATED from test_faults_async.py by tools/unasync.py. DO NOT EDIT.
"""Faults under a bounded concurrent load: the pool must stay correct (sync twin generated)."""

from __future__ import annotations

from time import monotonic

import psycopg
import pytest

from poolwatch import ConnectionPool, PoolTimeout

from ..acompat import gather, sleep, spawn, wait_until

pytestmark = [pytest.mark.db, pytest.mark.slow]

TIMEOUT = 2.0


class Load:
    """Workers running SELECT 1 through the pool for a bounded time, recording outcomes."""

    def __init__(self, pool, workers: int, seconds: float) -> None:
        self.pool = pool
        self.workers = workers
        self.until = monotonic() + seconds
        self.ok: list[float] = []  # completion times
        self.failures: list[tuple[float, str]] = []
        self.slowest = 0.0
        self.max_size_seen = 0

    def worker(self):
        while monotonic() < self.until:
            t0 = monotonic()
            try:
                with self.pool.connection() as conn:
                    conn.execute("SELECT 1")
                self.ok.append(monotonic())
            except (psycopg.OperationalError, PoolTimeout) as ex:
                self.failures.append((monotonic(), type(ex).__name__))
                sleep(0.01)
            self.slowest = max(self.slowest, monotonic() - t0)
            self.max_size_seen = max(self.max_size_seen, self.pool.snapshot().size)

    def run(self, fault):
        tasks = [spawn(self.worker) for _ in range(self.workers)]
        sleep(0.5)
        fault_at = monotonic()
        fault()
        gather(*tasks, timeout=60)
        return fault_at

    def report(self, fault: str, fault_at: float) -> None:
        """The figures for the record (shown with pytest -s)."""
        after = [t for t in self.ok if t >= fault_at]
        kinds: dict[str, int] = {}
        for _, kind in self.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        print(
            f"\n{fault}: {len(self.ok)} requests served ({len(after)} after the fault),"
            f" {len(self.failures)} failed with a clear error {kinds},"
            f" slowest {self.slowest:.2f} s"
        )


def check_invariants(pool):
    s = pool.snapshot()
    a = pool.aggregates()
    assert s.size <= s.max_size
    assert a.opened - a.closed == s.idle + s.used


def test_server_restart_mid_load(pg, dsn):
    with ConnectionPool(dsn, min_size=2, max_size=4, timeout=TIMEOUT) as pool:
        pool.wait()
        load = Load(pool, workers=4, seconds=4.0)

        def restart():
            pg.restart("fast")

        back_at = load.run(restart)
        load.report("server restart", back_at)
        assert load.slowest < TIMEOUT + 2.0, "a request hung past its timeout"
        assert load.max_size_seen <= 4
        assert [t for t in load.ok if t > back_at], "requests never succeeded again"
        a = pool.aggregates()
        assert a.errors.get(("broken", ""), 0) >= 1
        assert a.lifetime["broken"].count >= 1
        wait_until(lambda: pool.snapshot().idle == pool.snapshot().size)
        check_invariants(pool)


def test_backends_killed_mid_load(pg, dsn):
    name = "faults-kill"
    with ConnectionPool(
        dsn, min_size=3, max_size=3, timeout=TIMEOUT, kwargs={"application_name": name}
    ) as pool:
        pool.wait()
        load = Load(pool, workers=6, seconds=3.0)

        def kill():
            assert pg.terminate_backends(name) >= 1

        killed_at = load.run(kill)
        load.report("backends killed", killed_at)
        assert load.slowest < TIMEOUT + 2.0
        assert [t for t in load.ok if t > killed_at + 0.2]
        assert load.max_size_seen <= 3
        wait_until(lambda: pool.snapshot().idle == 3)
        wait_until(lambda: pg.backends(name) == 3)
        check_invariants(pool)
        assert pool.aggregates().lifetime["broken"].count >= 1
