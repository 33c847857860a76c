"""Behaviour of AsyncConnectionPool against a real PostgreSQL (sync twin: test_pool.py)."""

from __future__ import annotations

import logging
from time import monotonic

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from poolwatch import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests
from poolwatch.observe import PoolObserver

from ..acompat import agather, asleep, aspawn, await_until

pytestmark = pytest.mark.db


class RecordingObserver(PoolObserver):
    """Keeps every event, to assert on events rather than on any metrics backend."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_acquire(self, wait_seconds, outcome, queued):
        self.events.append(("acquire", outcome, queued, wait_seconds))

    def on_release(self, use_seconds):
        self.events.append(("release", use_seconds))

    def on_connect(self, seconds, error):
        self.events.append(("connect", error is None, seconds))

    def on_close(self, age_seconds, reason):
        self.events.append(("close", reason, age_seconds))

    def on_error(self, kind, sqlstate_class):
        self.events.append(("error", kind, sqlstate_class))

    def on_leak(self, held_seconds, stack):
        self.events.append(("leak", held_seconds, stack))

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


def app(request) -> str:
    """An application_name unique to the test, to count its backends on the server."""
    return "t-" + request.node.name.replace("[", "-").replace("]", "")[-50:]


async def backend_pids(pool) -> set[int]:
    pids = set()
    conns = [await pool.getconn() for _ in range(pool.max_size)]
    for conn in conns:
        pids.add(conn.info.backend_pid)
    for conn in conns:
        await pool.putconn(conn)
    return pids


# --- opening, closing, waiting ---


async def test_defaults(dsn):
    pool = AsyncConnectionPool(dsn, open=False)
    assert (pool.min_size, pool.max_size) == (4, 4)
    assert pool.timeout == 30.0 and pool.max_waiting == 0
    assert pool.max_lifetime == 3600.0 and pool.max_idle == 600.0
    assert pool.reconnect_timeout == 300.0 and pool.num_workers == 3
    assert pool.name.startswith("pool-") and pool.closed
    assert pool.leak_timeout is None and pool.observer is None
    assert AsyncConnectionPool(dsn, open=False).name != pool.name


async def test_open_wait_fills_min_size(dsn, pg, request):
    async with AsyncConnectionPool(
        dsn, min_size=3, max_size=5, kwargs={"application_name": app(request)}
    ) as pool:
        await pool.wait(timeout=10)
        s = pool.snapshot()
        assert (s.size, s.idle, s.used) == (3, 3, 0)
        assert pg.backends(app(request)) == 3
        assert pool.server_max_connections == pg.max_connections - 3
    await await_until(lambda: pg.backends(app(request)) == 0)


async def test_open_wait_timeout_closes_pool(pg):
    pool = AsyncConnectionPool(pg.dsn(port=1), min_size=1, open=False)
    with pytest.raises(PoolTimeout, match="initialization incomplete") as exc:
        await pool.open(wait=True, timeout=0.5)
    assert pool.closed
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)


async def test_closed_pool_refuses(dsn):
    pool = AsyncConnectionPool(dsn, min_size=1, open=False)
    with pytest.raises(PoolClosed, match="not open yet"):
        await pool.getconn()
    await pool.open()
    await pool.close()
    with pytest.raises(PoolClosed, match="already closed"):
        await pool.getconn()
    with pytest.raises(PoolClosed, match="cannot be reused"):
        await pool.open()
    await pool.close()  # closing twice is fine
    assert pool.aggregates().acquire["closed"].count == 2


async def test_close_fails_waiters_and_closes_returned(dsn):
    pool = AsyncConnectionPool(dsn, min_size=1, open=False)
    await pool.open(wait=True)
    held = await pool.getconn()
    errors = []

    async def waiter():
        try:
            await pool.getconn(timeout=10)
        except PoolClosed as ex:
            errors.append(ex)

    task = aspawn(waiter)
    await await_until(lambda: pool.snapshot().waiting == 1)
    await pool.close()
    await agather(task)
    assert len(errors) == 1 and "closed" in str(errors[0])
    await pool.putconn(held)
    assert held.closed
    a = pool.aggregates()
    assert a.opened - a.closed == 0


# --- handing out and taking back ---


async def test_getconn_putconn(dsn):
    async with AsyncConnectionPool(dsn, min_size=2) as pool:
        conn = await pool.getconn()
        assert conn._pool is pool
        cur = await conn.execute("SELECT 42")
        assert (await cur.fetchone()) == (42,)
        await conn.rollback()
        await pool.putconn(conn)
        assert conn._pool is None and not conn.closed
        s = pool.snapshot()
        assert s.used == 0 and s.idle + s.opening == 2


async def test_connection_context_commits_and_rolls_back(dsn):
    async with AsyncConnectionPool(dsn, min_size=1) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS ctx_t (v int)")
            await conn.execute("TRUNCATE ctx_t")
            await conn.execute("INSERT INTO ctx_t VALUES (1)")
        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO ctx_t VALUES (2)")
                raise ZeroDivisionError
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT array_agg(v) FROM ctx_t")
            assert (await cur.fetchone()) == ([1],)
            assert conn.pgconn.transaction_status == TransactionStatus.INTRANS
        assert conn.pgconn.transaction_status == TransactionStatus.IDLE


async def test_lifo_reuse_keeps_one_connection_warm(dsn):
    async with AsyncConnectionPool(dsn, min_size=3, use_lifo=True) as pool:
        await pool.wait()
        pids = set()
        for _ in range(5):
            async with pool.connection() as conn:
                pids.add(conn.info.backend_pid)
        assert len(pids) == 1


async def test_fifo_by_default_uses_every_connection_in_turn(dsn):
    async with AsyncConnectionPool(dsn, min_size=3) as pool:
        await pool.wait()
        pids = []
        for _ in range(6):
            async with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
        assert len(set(pids)) == 3
        assert pids[3:] == pids[:3]  # the same round again, in the same order


async def test_putconn_foreign_or_twice(dsn):
    async with (
        AsyncConnectionPool(dsn, min_size=1, name="one") as p1,
        AsyncConnectionPool(dsn, min_size=1, name="two") as p2,
    ):
        conn = await p1.getconn()
        with pytest.raises(ValueError, match="it comes from pool 'one'"):
            await p2.putconn(conn)
        await p1.putconn(conn)
        with pytest.raises(ValueError, match="already returned"):
            await p1.putconn(conn)
        async with await psycopg.AsyncConnection.connect(dsn) as other:
            with pytest.raises(ValueError, match="doesn't come from any pool"):
                await p1.putconn(other)
        assert p1.snapshot().idle == 1


async def test_timeout_message_names_pool_and_state(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, name="tight") as pool:
        held = await pool.getconn()
        t0 = monotonic()
        with pytest.raises(PoolTimeout) as exc:
            await pool.getconn(timeout=0.2)
        assert 0.15 < monotonic() - t0 < 5
        msg = str(exc.value)
        assert "'tight'" in msg and "couldn't get a connection" in msg
        assert "size=1/1" in msg and "used=1" in msg and "idle=0" in msg and "waiting=" in msg
        assert exc.value.snapshot is not None and exc.value.snapshot.used == 1
        assert exc.value.__cause__ is None
        await pool.putconn(held)
        a = pool.aggregates()
        assert a.acquire["timeout"].count == 1 and a.errors[("timeout", "")] == 1
        assert pool.snapshot().waiting == 0


async def test_timeout_zero_means_do_not_wait(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
        await pool.wait()
        conn = await pool.getconn(timeout=0)
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0)
        await pool.putconn(conn)


async def test_waiters_are_served_in_order(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
        await pool.wait()
        held = await pool.getconn()
        served = []

        async def worker(i):
            async with pool.connection(timeout=10):
                served.append(i)
                await asleep(0.01)

        tasks = []
        for i in range(6):
            tasks.append(aspawn(worker, i))
            await await_until(lambda n=i + 1: pool.snapshot().waiting == n)
        await pool.putconn(held)
        await agather(*tasks)
        assert served == list(range(6))
        assert pool.aggregates().waits == 6


async def test_max_waiting(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_waiting=2) as pool:
        held = await pool.getconn()
        outcomes = []

        async def waiter():
            try:
                await pool.getconn(timeout=1.0)
            except PoolTimeout:
                outcomes.append("timeout")

        tasks = [aspawn(waiter) for _ in range(2)]
        await await_until(lambda: pool.snapshot().waiting == 2)
        with pytest.raises(TooManyRequests, match="2 requests waiting"):
            await pool.getconn()
        await agather(*tasks)
        assert outcomes == ["timeout", "timeout"]
        await pool.putconn(held)
        a = pool.aggregates()
        assert a.acquire["too_many"].count == 1 and a.acquire["timeout"].count == 2
        assert a.errors[("too_many_requests", "")] == 1
        assert pool.get_stats()["requests_errors"] == 3


async def test_pool_grows_under_demand_and_caps(dsn, pg, request):
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=4, kwargs={"application_name": app(request)}
    ) as pool:
        await pool.wait()
        conns = [await pool.getconn(timeout=10) for _ in range(4)]
        assert pool.snapshot().size == 4
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0.3)
        assert pool.snapshot().size == 4 and pg.backends(app(request)) == 4
        for conn in conns:
            await pool.putconn(conn)


# --- returned-connection handling ---


async def test_rollback_on_return_warns_and_counts(dsn, caplog):
    caplog.set_level(logging.WARNING, logger="poolwatch")
    async with AsyncConnectionPool(dsn, min_size=1) as pool:
        conn = await pool.getconn()
        await conn.execute("SELECT 1")
        assert conn.pgconn.transaction_status == TransactionStatus.INTRANS
        await pool.putconn(conn)
        assert conn.pgconn.transaction_status == TransactionStatus.IDLE and not conn.closed
        conn = await pool.getconn()
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1/0")
        assert conn.pgconn.transaction_status == TransactionStatus.INERROR
        await pool.putconn(conn)
        assert conn.pgconn.transaction_status == TransactionStatus.IDLE
        assert pool.aggregates().errors[("rollback_on_return", "")] == 2
    assert [r.levelname for r in caplog.records if "rolling back" in r.message] == ["WARNING"] * 2


async def test_broken_connection_is_replaced(dsn):
    obs = RecordingObserver()
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, observer=obs) as pool:
        conn = await pool.getconn()
        await conn.close()
        await pool.putconn(conn)
        async with pool.connection(timeout=10) as conn2:
            assert conn2 is not conn and not conn2.closed
        stats = pool.get_stats()
        assert stats["returns_bad"] == 1
        a = pool.aggregates()
        assert a.errors[("broken", "")] == 1 and a.lifetime["broken"].count == 1
    assert ("close", "broken") in [e[:2] for e in obs.of("close")]


async def test_reset_callback(dsn):
    calls = []

    async def reset(conn):
        calls.append(conn.info.backend_pid)
        await conn.execute("SET timezone TO 'UTC'")
        await conn.commit()

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, reset=reset) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SET timezone TO 'Asia/Tokyo'")
        async with pool.connection(timeout=5) as conn:
            assert conn.info.backend_pid == pid
            cur = await conn.execute("SHOW timezone")
            assert (await cur.fetchone()) == ("UTC",)
        assert calls and calls[0] == pid


async def test_reset_leaving_a_transaction_discards(dsn, caplog):
    async def bad_reset(conn):
        await conn.execute("SELECT 1")  # leaves INTRANS

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, reset=bad_reset) as pool:
        async with pool.connection() as conn:
            first = conn
        async with pool.connection(timeout=10) as conn:
            assert conn is not first
        await await_until(lambda: first.closed)
        assert pool.aggregates().lifetime["reset_failed"].count == 1
    assert any("error resetting connection" in r.message for r in caplog.records)


async def test_configure_callback(dsn):
    async def configure(conn):
        await conn.set_autocommit(True)

    async with AsyncConnectionPool(dsn, min_size=2, configure=configure) as pool:
        await pool.wait()
        async with pool.connection() as conn:
            assert conn.autocommit


async def test_configure_leaving_transaction_is_a_connect_error(pg):
    async def configure(conn):
        await conn.execute("SELECT 1")

    pool = AsyncConnectionPool(pg.dsn(), min_size=1, configure=configure, open=False)
    await pool.open()
    with pytest.raises(PoolTimeout) as exc:
        await pool.getconn(timeout=0.5)
    assert isinstance(exc.value.__cause__, psycopg.ProgrammingError)
    assert "configure" in str(exc.value.__cause__)
    await pool.close()


async def test_check_callback_replaces_bad_connection(dsn):
    bad = set()

    async def check(conn):
        if conn.info.backend_pid in bad:
            raise RuntimeError("failed check")
        await AsyncConnectionPool.check_connection(conn)

    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, check=check) as pool:
        async with pool.connection() as conn:
            bad.add(conn.info.backend_pid)
        async with pool.connection(timeout=10) as conn:
            assert conn.info.backend_pid not in bad
        a = pool.aggregates()
        assert a.errors[("check_failed", "")] == 1 and a.lifetime["check_failed"].count == 1
        assert pool.get_stats()["connections_lost"] == 1


async def test_check_method_discards_broken(dsn, pg, request):
    name = app(request)
    async with AsyncConnectionPool(dsn, min_size=2, kwargs={"application_name": name}) as pool:
        await pool.wait()
        before = await backend_pids(pool)
        assert pg.terminate_backends(name) == 2
        await pool.check()
        await await_until(lambda: pool.snapshot().idle == 2)
        after = await backend_pids(pool)
        assert not before & after
        assert pool.get_stats()["connections_lost"] == 2
        assert pool.aggregates().lifetime["broken"].count == 2


async def test_check_connection_restores_autocommit(dsn):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await AsyncConnectionPool.check_connection(conn)
        assert not conn.autocommit
        await conn.close()
        with pytest.raises(psycopg.OperationalError):
            await AsyncConnectionPool.check_connection(conn)


# --- lifetime, idleness, size ---


async def test_expired_connection_is_never_handed_out(dsn):
    async with AsyncConnectionPool(dsn, min_size=2, max_lifetime=0.3) as pool:
        await pool.wait()
        await asleep(0.4)  # both idle connections expire while idle
        for _ in range(3):
            async with pool.connection(timeout=10) as conn:
                assert monotonic() < conn._expire_at
        await await_until(lambda: pool.aggregates().lifetime["max_lifetime"].count >= 2)


async def test_max_lifetime_jitter(dsn):
    async with AsyncConnectionPool(dsn, min_size=4, max_lifetime=100) as pool:
        await pool.wait()
        conns = list(pool._idle)
        spans = [c._expire_at - c._created_at for c in conns]
        assert all(95 <= s <= 100 for s in spans)
        assert len(set(spans)) == 4


async def test_max_idle_shrinks_back_to_min_size(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=3, max_idle=0.2) as pool:
        conns = [await pool.getconn(timeout=10) for _ in range(3)]
        for conn in conns:
            await pool.putconn(conn)
        await await_until(lambda: pool.snapshot().size == 1, timeout=10)
        assert pool.aggregates().lifetime["max_idle"].count == 2


async def test_resize(dsn, pg, request):
    name = app(request)
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=2, kwargs={"application_name": name}
    ) as pool:
        await pool.wait()
        await pool.resize(3, 5)
        assert (pool.min_size, pool.max_size) == (3, 5)
        await await_until(lambda: pool.snapshot().idle == 3)
        await pool.resize(1, 1)
        await await_until(lambda: pg.backends(name) == 1)
        assert pool.snapshot().size == 1
        assert pool.aggregates().lifetime["shrink"].count == 2
        with pytest.raises(ValueError, match="max_size"):
            await pool.resize(3, 2)


async def test_drain_replaces_connections(dsn):
    async with AsyncConnectionPool(dsn, min_size=2) as pool:
        await pool.wait()
        held = await pool.getconn()
        before = {held.info.backend_pid} | {c.info.backend_pid for c in pool._idle}
        await pool.drain()
        await pool.putconn(held)  # returned after the drain: closed too
        await await_until(lambda: held.closed)
        await await_until(lambda: pool.snapshot().idle == 2)
        after = await backend_pids(pool)
        assert not before & after
        assert pool.aggregates().lifetime["drain"].count == 2


# --- connecting ---


async def test_reconnect_failed_callback(pg):
    called = []

    async def failed(pool):
        called.append(pool)

    pool = AsyncConnectionPool(
        pg.dsn(port=1), min_size=1, reconnect_timeout=0.2, reconnect_failed=failed, open=False
    )
    await pool.open()
    await await_until(lambda: bool(called), timeout=15)
    assert called == [pool]
    assert pool.snapshot().size == 0
    errors = pool.aggregates().errors
    assert errors[("connect", "08")] >= 1
    await pool.close()


async def test_callable_conninfo_and_kwargs(pg):
    calls = []

    def conninfo():
        calls.append("conninfo")
        return pg.dsn()

    async def kwargs():
        calls.append("kwargs")
        return {"application_name": "callable-kw"}

    async with AsyncConnectionPool(conninfo, kwargs=kwargs, min_size=1) as pool:
        async with pool.connection(timeout=10) as conn:
            assert conn.info.parameter_status("application_name") in ("callable-kw", b"callable-kw")
    assert "conninfo" in calls and "kwargs" in calls


async def test_connection_class_connect_is_used(dsn):
    made = []

    class MyConnection(psycopg.AsyncConnection):
        @classmethod
        async def connect(cls, *args, **kwargs):
            conn = await super().connect(*args, **kwargs)
            made.append(conn)
            return conn

    async with AsyncConnectionPool(dsn, connection_class=MyConnection, min_size=1) as pool:
        async with pool.connection(timeout=10) as conn:
            assert isinstance(conn, MyConnection) and conn in made


async def test_close_returns(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, close_returns=True) as pool:
        conn = await pool.getconn()
        await conn.close()  # psycopg returns it to the pool instead of closing it
        assert not conn.closed
        assert pool.snapshot().idle == 1
        async with pool.connection(timeout=1) as again:
            assert again is conn


async def test_connect_error_sqlstate_classes(pg):
    bad_password = pg.dsn(password="wrong")
    pool = AsyncConnectionPool(bad_password, min_size=1, open=False)
    await pool.open()
    await await_until(lambda: pool.aggregates().connect["error"].count >= 1)
    assert ("connect", "28") in pool.aggregates().errors
    with pytest.raises(PoolTimeout) as exc:
        await pool.getconn(timeout=0.3)
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)
    assert "wrong" not in str(exc.value)
    await pool.close()


# --- stats, snapshots, observers ---


async def test_get_stats_and_pop_stats(dsn):
    async with AsyncConnectionPool(dsn, min_size=2, max_size=2) as pool:
        await pool.wait()
        for _ in range(3):
            async with pool.connection():
                pass
        stats = pool.get_stats()
        assert stats["requests_num"] == 3 and stats["connections_num"] == 2
        assert stats["pool_min"] == 2 and stats["pool_max"] == 2
        assert stats["pool_size"] == 2 and stats["pool_available"] == 2
        assert stats["requests_waiting"] == 0 and "usage_ms" in stats
        assert "requests_queued" not in stats and "requests_errors" not in stats
        popped = pool.pop_stats()
        assert popped["requests_num"] == 3
        after = pool.get_stats()
        assert "requests_num" not in after and "connections_num" not in after
        assert after["pool_size"] == 2
        assert pool.aggregates().requests == 3  # the metrics never go backwards


async def test_observer_sees_every_event(dsn):
    obs = RecordingObserver()
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, observer=obs) as pool:
        await pool.wait()
        async with pool.connection():
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.1)
    acquires = [(e[1], e[2]) for e in obs.of("acquire")]
    assert acquires == [("ok", False), ("timeout", True)]
    assert len(obs.of("release")) == 1
    assert [e[1] for e in obs.of("connect")] == [True]
    assert [e[1] for e in obs.of("close")] == ["close"]
    assert ("error", "timeout", "") in obs.events


async def test_a_failing_observer_never_breaks_the_pool(dsn, caplog):
    class Broken(PoolObserver):
        def on_acquire(self, wait_seconds, outcome, queued):
            raise RuntimeError("observer bug")

    async with AsyncConnectionPool(dsn, min_size=1, observer=Broken()) as pool:
        for _ in range(3):
            async with pool.connection():
                pass
    assert len([r for r in caplog.records if "observer bug" in (r.exc_text or "")]) == 1


async def test_snapshot_and_integral(dsn):
    async with AsyncConnectionPool(dsn, min_size=2, max_size=2) as pool:
        await pool.wait()
        a = await pool.getconn()
        s0 = pool.snapshot()
        await asleep(0.3)
        s1 = pool.snapshot()
        await pool.putconn(a)
        assert s1.used == 1 and s1.idle == 1 and s1.saturation == 0.5
        used = s1.used_seconds_total - s0.used_seconds_total
        assert 0.25 < used < 0.6
        assert s1.oldest_checkout_seconds >= 0.3
        agg = pool.aggregates()
        assert agg.opened - agg.closed == s1.idle + s1.used


async def test_leak_timeout_logs_stack_once_and_return(dsn, caplog):
    caplog.set_level(logging.WARNING, logger="poolwatch")
    obs = RecordingObserver()
    async with AsyncConnectionPool(dsn, min_size=1, leak_timeout=0.1, observer=obs) as pool:
        conn = await pool.getconn()  # the line the report must point at
        await await_until(lambda: pool.snapshot().leaked == 1)
        await await_until(lambda: bool(obs.of("leak")))
        await asleep(0.3)
        leaks = [r for r in caplog.records if "possibly leaked" in r.message]
        assert len(leaks) == 1
        assert "test_leak_timeout_logs_stack_once_and_return" in leaks[0].message
        await pool.putconn(conn)
        assert pool.snapshot().leaked == 0
    assert any("reported as leaked was returned" in r.message for r in caplog.records)


async def test_repr_reads_like_a_dashboard(dsn, secret):
    async with AsyncConnectionPool(dsn, min_size=1, name="web") as pool:
        await pool.wait()
        text = repr(pool)
        assert "'web'" in text and "size=1/1" in text and "idle=1" in text
        assert secret not in text
