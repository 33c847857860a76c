"""Network and server faults under a bounded concurrent workload (sync twin: test_network.py).

The pool reaches PostgreSQL through `FaultProxy`, which the tests turn into a
blackhole, a slow link or a slow handshake; the server's own limits and
pg_terminate_backend provide the rest. Each test counts what the workload saw and
compares it with what the pool counted.
"""

from __future__ import annotations

import threading
from time import monotonic

import psycopg
import pytest

from poolwatch import AsyncConnectionPool, PoolTimeout
from poolwatch.embedded import create_cluster

from ..acompat import agather, asleep, aspawn, await_until
from .proxy import FaultProxy

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def proxy(pg):
    if not pg.is_running():
        pg.start()
    with FaultProxy("127.0.0.1", pg.port) as p:
        yield p


class Workload:
    """Workers that borrow, run SELECT 1 and return, recording every outcome and its time."""

    def __init__(self, pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.ok = 0
        self.timeouts = 0
        self.failed = 0
        self.slowest_timeout = 0.0
        self.last_ok = 0.0
        self.stop = False

    async def worker(self) -> None:
        while not self.stop:
            t0 = monotonic()
            try:
                async with self.pool.connection(timeout=self.timeout) as conn:
                    await conn.execute("SELECT 1")
                self.ok += 1
                self.last_ok = monotonic()
            except PoolTimeout:
                self.timeouts += 1
                self.slowest_timeout = max(self.slowest_timeout, monotonic() - t0)
            except psycopg.OperationalError:
                self.failed += 1  # the connection died under the query: a clear error
            await asleep(0.005)


async def test_blackhole_times_out_as_configured_and_recovers(proxy, pg):
    threads_before = threading.active_count()
    pool = AsyncConnectionPool(
        f"host=127.0.0.1 port={proxy.port} user=poolwatch dbname=postgres password={pg.password}",
        min_size=2, max_size=4, timeout=0.5, reconnect_timeout=60, open=False,
        kwargs={"connect_timeout": 2}, name="blackhole",
    )  # fmt: skip
    await pool.open(wait=True)
    load = Workload(pool, timeout=0.5)
    workers = [aspawn(load.worker) for _ in range(4)]
    await asleep(0.5)
    ok_before = load.ok

    proxy.blackhole()
    await asleep(3.0)
    during = (load.ok, load.timeouts, load.failed)
    proxy.heal()
    healed_at = monotonic()
    await await_until(lambda: load.last_ok > healed_at + 0.2, timeout=20)
    recovered_after = load.last_ok - healed_at
    load.stop = True
    await agather(*workers)

    agg = pool.aggregates()
    await pool.close()
    assert ok_before > 0
    assert during[1] > 0, "no request timed out during the blackhole"
    # no request waited past its timeout (plus scheduling slack)
    assert load.slowest_timeout < 0.5 + 0.4, load.slowest_timeout
    assert agg.acquire["timeout"].count == load.timeouts
    assert recovered_after < 15
    await await_until(lambda: threading.active_count() <= threads_before, timeout=10)
    print(f"\nblackhole: {ok_before} served before; during it {during[0] - ok_before} served,"
          f" {during[1]} timed out, {during[2]} failed with a clear error; recovered"
          f" {recovered_after:.1f} s after heal")  # fmt: skip


async def test_added_latency_slows_but_nothing_hangs(proxy, pg):
    pool = AsyncConnectionPool(
        f"host=127.0.0.1 port={proxy.port} user=poolwatch dbname=postgres password={pg.password}",
        min_size=2, max_size=2, timeout=0.3, open=False, name="latency",
    )  # fmt: skip
    await pool.open(wait=True)
    load = Workload(pool, timeout=0.3)
    proxy.latency = 0.05  # a 100 ms round trip: 6 workers on 2 connections must queue
    workers = [aspawn(load.worker) for _ in range(6)]
    await asleep(2.0)
    slow = (load.ok, load.timeouts)
    proxy.heal()
    await asleep(1.0)
    load.stop = True
    await agather(*workers)
    agg = pool.aggregates()
    await pool.close()
    assert slow[0] > 0 and slow[1] > 0
    assert load.slowest_timeout < 0.3 + 0.3
    assert load.ok > slow[0] * 2  # healed: far faster
    assert agg.acquire["timeout"].count == load.timeouts


async def test_slow_handshakes_grow_the_pool_slowly_and_serve_waiters_in_order(proxy, pg):
    proxy.connect_delay = 0.2
    pool = AsyncConnectionPool(
        f"host=127.0.0.1 port={proxy.port} user=poolwatch dbname=postgres password={pg.password}",
        min_size=1, max_size=6, timeout=10, open=False, name="slow-connect",
    )  # fmt: skip
    await pool.open(wait=True)
    proxy.max_connecting = 0
    order: list[int] = []
    held = await pool.getconn()

    async def request(i: int) -> None:
        async with pool.connection() as conn:
            order.append(i)
            await asleep(0.3)
            await conn.execute("SELECT 1")

    tasks = []
    for i in range(8):  # a burst, in a known order
        tasks.append(aspawn(request, i))
        await asleep(0.02)
    await agather(*tasks, timeout=30)
    await pool.putconn(held)
    snap = pool.snapshot()
    await pool.close()
    assert order == sorted(order) and len(order) == 8  # first come, first served
    # storm protection: one handshake at a time, never a burst of six
    assert proxy.max_connecting <= 2, proxy.max_connecting
    assert snap.size <= 6


async def test_terminated_idle_and_checked_out_connections_are_replaced(pg, dsn):
    app = "faults-terminate-async"
    async with AsyncConnectionPool(
        dsn, min_size=2, max_size=2, kwargs={"application_name": app}, name="terminate"
    ) as pool:
        await pool.wait()
        out = await pool.getconn()  # checked out
        assert pg.terminate_backends(app) == 2  # this one and the idle one
        with pytest.raises(psycopg.OperationalError):
            await out.execute("SELECT 1")
        await pool.putconn(out)  # discarded on return
        # the idle one is found dead on first use, and replaced after
        async with pool.connection() as conn:
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
        await await_until(lambda: pool.snapshot().idle == 2, timeout=10)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        agg = pool.aggregates()
        assert agg.opened - agg.closed == pool.snapshot().size == 2
    assert agg.errors[("broken", "")] == 2
    assert agg.lifetime["broken"].count == 2
    closed = pool.aggregates()
    assert closed.opened == closed.closed  # closed pool: every connection accounted for


@pytest.fixture(scope="module")
def tiny_server():
    """A server that takes 4 connections in all (superusers included)."""
    cluster = create_cluster(max_connections=4)
    try:
        yield cluster
    finally:
        cluster.destroy()


async def test_server_at_max_connections_backs_off_and_recovers(tiny_server):
    hogs = [psycopg.connect(tiny_server.dsn()) for _ in range(4)]
    pool = AsyncConnectionPool(
        tiny_server.dsn(), min_size=1, max_size=2, reconnect_timeout=30, open=False,
        name="full-server",
    )  # fmt: skip
    try:
        await pool.open(wait=False)
        with pytest.raises(PoolTimeout) as info:
            await pool.getconn(timeout=2.5)
        assert "53300" in repr(info.value.__cause__) or "too many" in str(info.value.__cause__)
        errors = pool.aggregates().errors.get(("connect", "53"), 0)
        # backoff: a handful of attempts in 2.5 s, not a tight loop
        assert 1 <= errors <= 10, errors
    finally:
        for hog in hogs:
            hog.close()
    await pool.wait(timeout=30)  # slots free: the pool recovers
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
    await pool.close()
