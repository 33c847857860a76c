"""close_returns=True and conn.close() inside `with pool.connection()`: the block's exit
must not touch the connection once it is lent to someone else.

Ground truth: whether the second borrower's insert was committed, read on a separate
connection.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from contextlib import nullcontext

import pytest
from psycopg.pq import TransactionStatus

from poolwatch import AsyncConnectionPool, ConnectionPool

pytestmark = pytest.mark.db


def committed_rows(pg, table: str) -> int:
    return int(pg.execute(f"SELECT count(*) FROM {table}")[0][0])


def wait_for(predicate, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.005)


def test_exit_after_close_does_not_return_the_next_borrowers_connection(pg, dsn, table):
    with ConnectionPool(dsn, min_size=1, close_returns=True) as pool:
        pool.wait(timeout=30)
        with pool.connection() as conn:
            conn.close()  # close_returns: this gives the connection back
            second = pool.getconn(timeout=5)  # and it is lent again at once
            assert second is conn
            second.execute(f"INSERT INTO {table} VALUES (1)")
        # The first block's exit neither committed the second borrower's transaction
        # nor gave its connection back.
        assert second.info.transaction_status == TransactionStatus.INTRANS
        assert committed_rows(pg, table) == 0
        s = pool.snapshot()
        assert (s.used, s.idle) == (1, 0)
        second.rollback()
        pool.putconn(second)
        assert committed_rows(pg, table) == 0
        assert pool.snapshot().idle == 1


def test_exit_after_close_with_nobody_else_is_quiet(dsn):
    with ConnectionPool(dsn, min_size=1, close_returns=True) as pool:
        pool.wait(timeout=30)
        with pool.connection() as conn:
            conn.close()
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 1)
        with pytest.raises(ValueError, match="already returned"):
            pool.putconn(conn)


async def test_exit_after_close_does_not_return_the_next_borrowers_connection_async(pg, dsn, table):
    async with AsyncConnectionPool(dsn, min_size=1, close_returns=True) as pool:
        await pool.wait(timeout=30)
        async with pool.connection() as conn:
            await conn.close()
            second = await pool.getconn(timeout=5)
            assert second is conn
            await second.execute(f"INSERT INTO {table} VALUES (1)")
        assert second.info.transaction_status == TransactionStatus.INTRANS
        assert committed_rows(pg, table) == 0
        s = pool.snapshot()
        assert (s.used, s.idle) == (1, 0)
        await second.rollback()
        await pool.putconn(second)
        assert committed_rows(pg, table) == 0


def test_exception_in_block_after_close_does_not_roll_back_the_next_borrower(pg, dsn, table):
    with ConnectionPool(dsn, min_size=1, close_returns=True) as pool:
        pool.wait(timeout=30)
        with pytest.raises(ZeroDivisionError):
            with pool.connection() as conn:
                conn.close()
                second = pool.getconn(timeout=5)
                second.execute(f"INSERT INTO {table} VALUES (1)")
                1 / 0  # noqa: B018
        assert second.info.transaction_status == TransactionStatus.INTRANS
        second.commit()
        assert committed_rows(pg, table) == 1
        pool.putconn(second)


# The block tells its own lending from a later one by a token the pool keeps on the
# connection. Each way a connection can leave the block and be lent again moves that
# token differently: straight to a waiter from the fast return, through the return
# worker (a reset callback) to a waiter, or back to the idle list and out again. Each
# must leave the next borrower's transaction alone.


@pytest.mark.parametrize("reset", [False, True], ids=["fast-return", "reset-callback"])
@pytest.mark.parametrize("exc", [False, True], ids=["clean-exit", "exception"])
def test_a_waiter_handed_the_connection_during_the_block_keeps_it(pg, dsn, table, reset, exc):
    kwargs = {"reset": lambda conn: None} if reset else {}
    with ConnectionPool(dsn, min_size=1, max_size=1, close_returns=True, **kwargs) as pool:
        pool.wait(timeout=30)
        lent: queue.Queue = queue.Queue()
        done = threading.Event()

        def next_borrower() -> None:
            conn = pool.getconn(timeout=10)
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            lent.put(conn)
            done.wait(10)
            conn.rollback()
            pool.putconn(conn)

        waiter = threading.Thread(target=next_borrower)
        with pytest.raises(ZeroDivisionError) if exc else nullcontext():
            with pool.connection() as conn:
                waiter.start()
                wait_for(lambda: pool.snapshot().waiting == 1, "the borrower waits")
                conn.close()  # close_returns: given back, straight to the waiter
                second = lent.get(timeout=10)
                assert second is conn
                if exc:
                    1 / 0  # noqa: B018
        assert second.info.transaction_status == TransactionStatus.INTRANS
        assert committed_rows(pg, table) == 0
        assert pool.snapshot().used == 1
        done.set()
        waiter.join(10)
        assert committed_rows(pg, table) == 0
        wait_for(lambda: pool.snapshot().idle == 1, "the connection is idle again")


@pytest.mark.parametrize("reset", [False, True], ids=["fast-return", "reset-callback"])
def test_a_connection_lent_again_from_the_idle_list_keeps_its_transaction(pg, dsn, table, reset):
    kwargs = {"reset": lambda conn: None} if reset else {}
    with ConnectionPool(dsn, min_size=1, max_size=1, close_returns=True, **kwargs) as pool:
        pool.wait(timeout=30)
        with pool.connection() as conn:
            conn.close()
            wait_for(lambda: pool.snapshot().idle == 1, "the return reached the idle list")
            second = pool.getconn(timeout=5)
            assert second is conn
            second.execute(f"INSERT INTO {table} VALUES (1)")
        assert second.info.transaction_status == TransactionStatus.INTRANS
        assert pool.snapshot().used == 1
        second.rollback()
        pool.putconn(second)
        assert committed_rows(pg, table) == 0


@pytest.mark.parametrize("reset", [False, True], ids=["fast-return", "reset-callback"])
async def test_a_waiting_task_handed_the_connection_during_the_block_keeps_it(
    pg, dsn, table, reset
):
    async def noop(conn) -> None:
        return None

    kwargs = {"reset": noop} if reset else {}
    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=1, close_returns=True, **kwargs
    ) as pool:
        await pool.wait(timeout=30)
        lent: asyncio.Queue = asyncio.Queue()
        done = asyncio.Event()

        async def next_borrower() -> None:
            conn = await pool.getconn(timeout=10)
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            await lent.put(conn)
            await asyncio.wait_for(done.wait(), 10)
            await conn.rollback()
            await pool.putconn(conn)

        async with pool.connection() as conn:
            task = asyncio.create_task(next_borrower())
            for _ in range(1000):
                if pool.snapshot().waiting == 1:
                    break
                await asyncio.sleep(0.005)
            await conn.close()
            second = await asyncio.wait_for(lent.get(), 10)
            assert second is conn
        assert second.info.transaction_status == TransactionStatus.INTRANS
        assert committed_rows(pg, table) == 0
        assert pool.snapshot().used == 1
        done.set()
        await asyncio.wait_for(task, 10)
        assert committed_rows(pg, table) == 0
