"""close_returns=True and conn.close() inside `with pool.connection()`: the block's exit
must not touch the connection once it is lent to someone else.

Ground truth: whether the second borrower's insert was committed, read on a separate
connection.
"""

from __future__ import annotations

import uuid

import pytest
from psycopg.pq import TransactionStatus

from poolwatch import AsyncConnectionPool, ConnectionPool

pytestmark = pytest.mark.db


@pytest.fixture
def table(pg):
    name = f"relend_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE TABLE {name} (x int)")
    yield name
    pg.execute(f"DROP TABLE {name}")


def committed_rows(pg, table: str) -> int:
    return int(pg.execute(f"SELECT count(*) FROM {table}")[0][0])


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
