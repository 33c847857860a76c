"""Scripted scenarios run side by side against psycopg_pool and poolwatch.

Each one records in ``d.obs`` what a program could observe (return values, errors,
stats); the driver adds warnings and callback counts. Together they call every public
method of the four pool classes and every callback, and provoke each failure a pool
reports: timeouts, a full queue, a closed pool, bad returns, failing callbacks, a
server that cannot be reached.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .sidebyside import Driver

ANSWER = "SELECT 1"


def status(conn: Any) -> str:
    return TransactionStatus(conn.pgconn.transaction_status).name


async def lifecycle(d: Driver) -> None:
    """Every public method of a pool, in the order of a program's life."""
    pool = d.pool(min_size=1, max_size=2)
    d.obs["closed_before_open"] = pool.closed
    d.obs["sizes"] = (pool.name, pool.min_size, pool.max_size)
    await d.attempt("getconn_not_open", lambda: pool.getconn(timeout=1))
    await d.attempt("open", lambda: pool.open(wait=True, timeout=20))
    await d.attempt("open_again", lambda: pool.open())
    d.obs["closed_after_open"] = pool.closed
    async with d.borrow(pool) as conn:
        await d.call(conn.execute(ANSWER))
        d.obs["in_block_status"] = status(conn)
    conn = await d.attempt("getconn", lambda: pool.getconn())
    await d.attempt("check_connection", lambda: type(pool).check_connection(conn))
    await d.attempt("putconn", lambda: pool.putconn(conn))
    d.obs["returned_pool_ref"] = conn._pool is None
    await d.attempt("resize", lambda: pool.resize(2, 2))  # no room to grow: no race
    await d.until(lambda: pool.get_stats()["pool_available"] == 2)
    d.obs["size_after_resize"] = (pool.min_size, pool.max_size)
    await d.attempt("check", lambda: pool.check())
    await d.attempt("drain", lambda: pool.drain())
    await d.until(lambda: pool.get_stats()["pool_available"] == 2)
    d.stats(pool, "stats_before_pop")
    await d.attempt("pop_stats", lambda: pool.pop_stats())
    d.stats(pool, "stats_after_pop")
    await d.attempt("wait", lambda: pool.wait(timeout=20))
    await d.attempt("close", lambda: pool.close())
    await d.attempt("close_again", lambda: pool.close())
    d.obs["closed_after_close"] = pool.closed
    await d.attempt("getconn_closed", lambda: pool.getconn(timeout=1))
    await d.attempt("reopen", lambda: pool.open())
    d.stats(pool, "stats_closed")


async def context_manager(d: Driver) -> None:
    async with d.entered(d.pool(min_size=1)) as pool:
        d.obs["open_inside"] = not pool.closed
        async with d.borrow(pool, timeout=10) as conn:
            await d.call(conn.execute(ANSWER))
        try:
            async with d.borrow(pool) as conn:
                await d.call(conn.execute("SELECT 1/0"))
        except psycopg.errors.DivisionByZero:
            d.obs["after_error_status"] = status(conn)
    d.obs["closed_after_exit"] = pool.closed
    d.stats(pool, "stats_closed")


async def fifo_order(d: Driver) -> None:
    """Idle connections are handed out in turn: each one is used."""
    pool = d.pool(min_size=3)
    await d.call(pool.open(wait=True, timeout=20))
    pids = []
    for _ in range(6):
        async with d.borrow(pool) as conn:
            pids.append(conn.info.backend_pid)
    d.obs["order"] = d.pid_order(pids)
    await d.call(pool.close())


async def timeout_and_queue(d: Driver) -> None:
    pool = d.pool(min_size=1, max_waiting=1)
    await d.call(pool.open(wait=True, timeout=20))
    held = await d.call(pool.getconn())
    await d.attempt("timeout", lambda: pool.getconn(timeout=0.2))
    d.obs["waiting_after_timeout"] = pool.get_stats()["requests_waiting"]
    await d.call(pool.putconn(held))
    d.stats(pool, "stats_after_timeout")
    await d.call(pool.close())

    # A fresh pool: in psycopg_pool, the request that timed out above would still
    # count against max_waiting until a connection is handed over.
    pool = d.pool(min_size=1, max_waiting=1)
    await d.call(pool.open(wait=True, timeout=20))
    held = await d.call(pool.getconn())

    async def waiter() -> None:
        conn = await d.attempt("waiter", lambda: pool.getconn(timeout=20))
        if conn is not None:
            await d.call(pool.putconn(conn))

    join = await d.background(waiter)
    await d.until(lambda: pool.get_stats()["requests_waiting"] == 1)
    await d.attempt("too_many", lambda: pool.getconn(timeout=1))
    await d.call(pool.putconn(held))
    await join()
    d.stats(pool)
    await d.call(pool.close())


async def returned_in_transaction(d: Driver) -> None:
    pool = d.pool(min_size=1, reset=d.callback("reset"))
    await d.call(pool.open(wait=True, timeout=20))
    conn = await d.call(pool.getconn())
    await d.call(conn.execute(ANSWER))
    await d.call(pool.putconn(conn))
    conn = await d.call(pool.getconn(timeout=20))
    try:
        await d.call(conn.execute("SELECT 1/0"))
    except psycopg.errors.DivisionByZero:
        pass
    await d.call(pool.putconn(conn))
    await d.until(lambda: pool.get_stats()["pool_available"] == 1)
    d.obs["status_after"] = status(conn)
    d.stats(pool)
    await d.call(pool.close())


async def returned_while_active(d: Driver) -> None:
    """A connection given back while its query still runs is closed and replaced."""
    pool = d.pool(min_size=1)
    await d.call(pool.open(wait=True, timeout=20))
    conn = await d.call(pool.getconn())
    conn.pgconn.send_query(b"SELECT pg_sleep(0.5)")
    d.obs["status_returned"] = status(conn)
    await d.call(pool.putconn(conn))
    d.obs["closed"] = conn.closed
    await d.until(lambda: pool.get_stats()["pool_available"] == 1)
    d.stats(pool)
    await d.call(pool.close())


async def rollback_fails(d: Driver) -> None:
    """A connection returned in a transaction whose server session has ended."""
    app = f"sbs-rollback-{id(d)}"
    pool = d.pool(min_size=1, kwargs={"application_name": app})
    await d.call(pool.open(wait=True, timeout=20))
    conn = await d.call(pool.getconn())
    await d.call(conn.execute(ANSWER))
    d.obs["terminated"] = d.pg.terminate_backends(app)
    await asyncio.sleep(0.2)
    await d.call(pool.putconn(conn))
    d.obs["closed"] = conn.closed
    await d.until(lambda: pool.get_stats()["pool_available"] == 1)
    d.stats(pool)
    await d.call(pool.close())


async def returned_closed(d: Driver) -> None:
    pool = d.pool(min_size=1, configure=d.callback("configure"), reset=d.callback("reset"))
    await d.call(pool.open(wait=True, timeout=20))
    conn = await d.call(pool.getconn())
    await d.call(conn.close())
    await d.call(pool.putconn(conn))
    await d.until(lambda: pool.get_stats()["pool_available"] == 1)
    await d.attempt("double_putconn", lambda: pool.putconn(conn))
    d.stats(pool)
    await d.call(pool.close())


def _fail(conn: Any) -> None:
    raise psycopg.OperationalError("callback failed on purpose")


async def failing_reset(d: Driver) -> None:
    pool = d.pool(min_size=1, configure=d.callback("configure"), reset=d.callback("reset", _fail))
    await d.call(pool.open(wait=True, timeout=20))
    async with d.borrow(pool) as conn:
        await d.call(conn.execute(ANSWER))
    await d.until(lambda: pool.get_stats()["pool_available"] == 1 and d.calls["configure"] == 2)
    d.stats(pool)
    await d.call(pool.close())


async def reset_leaves_transaction(d: Driver) -> None:
    pool = d.pool(
        min_size=1,
        configure=d.callback("configure"),
        reset=d.callback("reset", lambda conn: conn.execute(ANSWER)),
    )
    await d.call(pool.open(wait=True, timeout=20))
    async with d.borrow(pool):
        pass
    await d.until(lambda: pool.get_stats()["pool_available"] == 1 and d.calls["configure"] == 2)
    d.stats(pool)
    await d.call(pool.close())


async def configure_fails_once(d: Driver) -> None:
    """A configure callback failing on the first connection: retried, one warning."""

    def first_fails(conn: Any) -> Any:
        if d.calls["configure"] == 1:
            return conn.execute(ANSWER)  # leaves a transaction open: refused
        return None

    pool = d.pool(min_size=1, configure=d.callback("configure", first_fails))
    await d.attempt("open", lambda: pool.open(wait=True, timeout=20))
    d.stats(pool)
    await d.call(pool.close())


async def check_callback(d: Driver) -> None:
    """A check that fails once: the connection is replaced, the request still served."""

    def fails_first(conn: Any) -> None:
        if d.calls["check"] == 1:
            raise psycopg.OperationalError("check failed on purpose")

    pool = d.pool(min_size=1, check=d.callback("check", fails_first))
    await d.call(pool.open(wait=True, timeout=20))
    async with d.borrow(pool, timeout=20) as conn:
        await d.call(conn.execute(ANSWER))
    await d.until(lambda: pool.get_stats()["pool_available"] == 1)
    d.stats(pool)
    await d.call(pool.close())


async def server_unreachable(d: Driver) -> None:
    """Connecting fails: reconnect_failed is called once the reconnect_timeout is over."""
    pool = d.pool(
        conninfo=d.pg.dsn(port=1, connect_timeout=2),
        min_size=1,
        reconnect_timeout=0.5,
        reconnect_failed=d.callback("reconnect_failed"),
    )
    await d.call(pool.open())
    await d.until(lambda: d.calls["reconnect_failed"] == 1)
    await d.attempt("getconn", lambda: pool.getconn(timeout=0.5))
    # The request made the pool try again, until reconnect_timeout once more.
    await d.until(lambda: d.calls["reconnect_failed"] == 2)
    d.stats(pool)
    await d.call(pool.close())


async def null_basic(d: Driver) -> None:
    pool = d.pool(
        null=True, max_size=2, configure=d.callback("configure"), reset=d.callback("reset")
    )
    await d.attempt("open", lambda: pool.open(wait=True, timeout=20))
    pids = []
    for _ in range(3):
        async with d.borrow(pool) as conn:
            pids.append(conn.info.backend_pid)
    d.obs["distinct"] = len(set(pids))
    await d.attempt("check", lambda: pool.check())
    await d.attempt("resize", lambda: pool.resize(0, 3))
    d.obs["max_size"] = pool.max_size
    await d.attempt("drain", lambda: pool.drain())
    d.stats(pool)
    await d.call(pool.close())
    await d.attempt("getconn_closed", lambda: pool.getconn(timeout=1))


async def null_returns(d: Driver) -> None:
    """Bad returns to a null pool, with nobody waiting, then with a waiter."""
    pool = d.pool(
        null=True, max_size=1, configure=d.callback("configure"), reset=d.callback("reset")
    )
    await d.call(pool.open())
    conn = await d.call(pool.getconn())
    await d.call(conn.close())
    await d.call(pool.putconn(conn))  # closed, nobody waiting: just dropped
    conn = await d.call(pool.getconn(timeout=20))
    await d.call(conn.execute(ANSWER))
    await d.call(pool.putconn(conn))  # in a transaction, nobody waiting: just closed
    async with d.borrow(pool, timeout=20):
        pass
    d.stats(pool, "stats_alone")

    held = await d.call(pool.getconn(timeout=20))
    got: list[Any] = []

    async def waiter() -> None:
        async with d.borrow(pool, timeout=20) as conn:
            got.append(conn)

    join = await d.background(waiter)
    await d.until(lambda: pool.get_stats()["requests_waiting"] == 1)
    await d.call(held.execute(ANSWER))
    await d.call(pool.putconn(held))  # in a transaction, someone waiting: rolled back, reused
    await join()
    d.obs["waiter_got_same"] = got[0] is held
    d.stats(pool)
    await d.call(pool.close())


async def null_wait_configure_fails(d: Driver) -> None:
    """wait() on a null pool whose configure fails once, then works."""

    def first_fails(conn: Any) -> Any:
        if d.calls["configure"] == 1:
            return conn.execute(ANSWER)  # leaves a transaction open: refused
        return None

    pool = d.pool(null=True, configure=d.callback("configure", first_fails))
    await d.attempt("open", lambda: pool.open(wait=True, timeout=20))
    d.stats(pool)
    await d.call(pool.close())


SCENARIOS = [
    lifecycle,
    context_manager,
    fifo_order,
    timeout_and_queue,
    returned_in_transaction,
    returned_while_active,
    rollback_fails,
    returned_closed,
    failing_reset,
    reset_leaves_transaction,
    configure_fails_once,
    check_callback,
    server_unreachable,
    null_basic,
    null_returns,
    null_wait_configure_fails,
]
