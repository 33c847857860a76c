"""Red-team attacks on the lending token a `connection()` block compares at its end.

The block decides whether it still owns its connection from one unlocked read: its
connection's entry in the pool's `_out`. Another thread may run during that read: on a
free-threaded CPython at any moment, on a GIL build whenever the interpreter switches
threads there. These tests put another borrower exactly there, through a connection
class that runs it while the read hashes the connection, and read the ground truth
(committed rows) on a separate connection.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from poolwatch import AsyncConnectionPool, ConnectionPool, NullConnectionPool

# The same ground truth as the tests this file attacks (the `table` fixture: conftest.py).
from .test_relend import committed_rows

pytestmark = pytest.mark.db


class InterleavingConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A real connection that, once armed, runs a callback when it is next hashed (a
    dict look-up of it, such as the block's read of `_out`): what another thread could
    do in the middle of that read."""

    def __hash__(self) -> int:
        hook = type(self).armed
        if hook is not None:
            type(self).armed = None
            hook()
        return object.__hash__(self)

    armed: Callable[[], None] | None = None


def test_a_borrower_during_the_exit_read_keeps_its_transaction(pg, dsn, table):
    """The block gave its connection back (fast return to the idle list); at its exit,
    during its read of the token, another borrower takes that connection and opens a
    transaction. The exit must neither commit that transaction nor return the
    connection it no longer owns."""
    with ConnectionPool(
        dsn, min_size=1, max_size=1, close_returns=True, connection_class=InterleavingConnection
    ) as pool:
        pool.wait(timeout=30)
        taken: list[Any] = []

        def next_borrower() -> None:
            conn = pool.getconn(timeout=5)
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            taken.append(conn)

        try:
            with pool.connection() as conn:
                conn.close()  # close_returns: back to the idle list, token left behind
                assert pool.snapshot().idle == 1
                InterleavingConnection.armed = next_borrower
        finally:
            InterleavingConnection.armed = None
        # The other borrower ran inside the exit's read.
        assert len(taken) == 1
        second = taken[0]
        assert second is conn
        # Ground truth: its insert is still uncommitted, and it still holds the connection.
        assert committed_rows(pg, table) == 0
        assert second.info.transaction_status == TransactionStatus.INTRANS
        s = pool.snapshot()
        assert (s.used, s.idle) == (1, 0)
        second.rollback()
        pool.putconn(second)  # would raise "already returned" had the block returned it
        assert committed_rows(pg, table) == 0
        assert pool.snapshot().idle == 1


# One `connection()` object entered by two tasks at once: the guard against entering
# an open block looked at the connection only once getconn() had returned, so while
# both waited for a connection neither saw the other. The first to finish then took
# over the second's lending: its exit committed the second's transaction and returned
# the second's connection, and its own connection never came back.


async def test_a_context_entered_by_two_waiting_tasks_refuses_the_second(pg, dsn, table):
    async with AsyncConnectionPool(dsn, min_size=2, max_size=2) as pool:
        await pool.wait(timeout=30)
        held = [await pool.getconn(timeout=5), await pool.getconn(timeout=5)]
        shared = pool.connection()
        first_done = asyncio.Event()

        async def first() -> None:
            async with shared as conn:
                await conn.execute("SELECT 1")
            first_done.set()

        async def second() -> None:
            async with shared as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                await asyncio.wait_for(first_done.wait(), 10)
                # Still this task's transaction, uncommitted, on a connection it holds.
                assert conn.info.transaction_status == TransactionStatus.INTRANS
                assert committed_rows(pg, table) == 0
                await conn.rollback()

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]

        def settled() -> int:  # entries waiting for a connection, or already ended
            return pool.snapshot().waiting + sum(t.done() for t in tasks)

        for _ in range(2000):
            if settled() == 2:
                break
            await asyncio.sleep(0.005)
        assert settled() == 2
        for conn in held:
            await pool.putconn(conn)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        # The second entry of the open context is refused, as it is when it comes later.
        errors = [r for r in results if isinstance(r, BaseException)]
        assert [type(x) for x in errors] == [RuntimeError], results
        assert "already open" in str(errors[0])
        assert committed_rows(pg, table) == 0
        # Nothing leaked: every connection is back, and the server sees none in use.
        for _ in range(2000):
            if pool.snapshot().used == 0:
                break
            await asyncio.sleep(0.005)
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 2)


# Many threads, few connections, the interpreter switching threads as often as it can:
# blocks that give their connection back midway (with or without a transaction open),
# blocks that raise, and plain ones, all at once, on a pool that hands returned
# connections straight to waiters. Each block's fate is known from what it did, so
# the committed rows are predicted by the test and compared with the database.

_MODES = ("commit", "close-in-transaction", "commit-then-close", "raise")


@pytest.mark.parametrize("pool_class", [ConnectionPool, NullConnectionPool])
@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "reset-callback"])
def test_racing_blocks_commit_exactly_their_own_rows(pg, table, pool_class, reset):
    app = f"relend-rt-{uuid.uuid4().hex[:8]}"
    kwargs: dict[str, Any] = {"reset": lambda conn: None} if reset else {}
    if pool_class is ConnectionPool:
        kwargs["min_size"] = 2
    nthreads, rounds = 4, 60
    expected = [0] * nthreads
    errors: list[BaseException] = []
    with pool_class(
        pg.dsn(application_name=app), max_size=2, close_returns=True, timeout=30, **kwargs
    ) as pool:
        pool.wait(timeout=30)

        def worker(n: int) -> None:
            try:
                for i in range(rounds):
                    mode = _MODES[(n + i) % len(_MODES)]
                    try:
                        with pool.connection() as conn:
                            conn.execute(f"INSERT INTO {table} VALUES ({n})")
                            if mode == "close-in-transaction":
                                conn.close()  # the pool rolls it back
                            elif mode == "commit-then-close":
                                conn.commit()
                                conn.close()
                            elif mode == "raise":
                                raise KeyError(mode)
                    except KeyError:
                        pass
                    if mode in ("commit", "commit-then-close"):
                        expected[n] += 1
            except BaseException as ex:  # reported by the main thread
                errors.append(ex)

        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(nthreads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            sys.setswitchinterval(old)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        rows = dict(pg.execute(f"SELECT x, count(*) FROM {table} GROUP BY x"))
        assert [int(rows.get(n, 0)) for n in range(nthreads)] == expected
        # Nothing left checked out: in the pool's count, and on the server no session
        # of this pool is still in a transaction.
        deadline = time.monotonic() + 30
        while pool.snapshot().used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.snapshot().used == 0
        in_tx = pg.execute(
            "SELECT count(*) FROM pg_stat_activity"
            f" WHERE application_name = '{app}'"
            " AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
        )
        assert int(in_tx[0][0]) == 0


# A task cancelled while its block's exit commits: the commit is interrupted (a
# deferred trigger keeps it running), and the block must still give its connection
# back, with no transaction left open on the server, and the cancellation must go on.


async def test_a_task_cancelled_during_the_exit_commit_gives_its_connection_back(pg, table):
    app = f"relend-rt-{uuid.uuid4().hex[:8]}"
    fn, trig = f"{table}_slow", f"{table}_trg"
    pg.execute(
        f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_sleep(5); RETURN NULL; END $$"
    )
    pg.execute(
        f"CREATE CONSTRAINT TRIGGER {trig} AFTER INSERT ON {table}"
        f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}()"
    )
    try:
        async with AsyncConnectionPool(
            pg.dsn(application_name=app), min_size=1, max_size=1, timeout=30
        ) as pool:
            await pool.wait(timeout=30)

            async def block() -> None:
                async with pool.connection() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (1)")

            task = asyncio.create_task(block())

            def committing() -> bool:
                rows = pg.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    f" WHERE application_name = '{app}' AND query = 'COMMIT'"
                    " AND state = 'active'"
                )
                return int(rows[0][0]) == 1

            for _ in range(2000):
                if committing() or task.done():
                    break
                await asyncio.sleep(0.005)
            assert committing(), "the exit's commit is running"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 20)
            for _ in range(4000):
                if pool.snapshot().used == 0 and pool.snapshot().idle == 1:
                    break
                await asyncio.sleep(0.005)
            s = pool.snapshot()
            assert (s.used, s.idle) == (0, 1)
            # The interrupted commit did not commit, and nothing is left open.
            assert committed_rows(pg, table) == 0
            open_tx = pg.execute(
                "SELECT count(*) FROM pg_stat_activity"
                f" WHERE application_name = '{app}' AND state <> 'idle'"
            )
            assert int(open_tx[0][0]) == 0
            # The connection works for the next block.
            async with pool.connection() as conn:
                assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
    finally:
        pg.execute(f"DROP TRIGGER {trig} ON {table}")
        pg.execute(f"DROP FUNCTION {fn}()")


def test_a_context_entered_by_two_waiting_threads_refuses_the_second(pg, dsn, table):
    with ConnectionPool(dsn, min_size=2, max_size=2) as pool:
        pool.wait(timeout=30)
        held = [pool.getconn(timeout=5), pool.getconn(timeout=5)]
        shared = pool.connection()
        outcomes: list[BaseException | None] = []
        entered: list[int] = []

        def both_settled() -> bool:  # both inside their block, or one of them refused
            return len(entered) + len(outcomes) >= 2

        def borrower(n: int) -> None:
            try:
                with shared as conn:
                    conn.execute(f"INSERT INTO {table} VALUES ({n})")
                    entered.append(n)
                    deadline = time.monotonic() + 20
                    while not both_settled() and time.monotonic() < deadline:
                        time.sleep(0.005)
                    assert conn.info.transaction_status == TransactionStatus.INTRANS
                    conn.rollback()
                outcomes.append(None)
            except BaseException as ex:
                outcomes.append(ex)

        threads = [threading.Thread(target=borrower, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while pool.snapshot().waiting + len(outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        for conn in held:
            pool.putconn(conn)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        # One block ran; the other entry was refused, as a later one would be.
        errors = [x for x in outcomes if x is not None]
        assert len(outcomes) == 2
        assert [type(x) for x in errors] == [RuntimeError], outcomes
        assert committed_rows(pg, table) == 0
        deadline = time.monotonic() + 20
        while pool.snapshot().used and time.monotonic() < deadline:
            time.sleep(0.005)
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_leaving_the_block_leaves_the_parents_transaction_alone(pg, dsn, table):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=30)
        block = pool.connection()
        conn = block.__enter__()
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        pid = os.fork()
        if pid == 0:  # the child leaves the inherited block, then ends at once
            code = 1
            try:
                block.__exit__(None, None, None)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # the child's exit raised nothing
        # It neither committed (on the socket it shares with the parent) nor returned.
        assert committed_rows(pg, table) == 0
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert conn.execute("SELECT count(*) FROM " + table).fetchone() == (1,)
        assert pool.snapshot().used == 1
        block.__exit__(KeyError, KeyError("x"), None)  # the parent rolls back and returns
        assert committed_rows(pg, table) == 0
        s = pool.snapshot()
        assert (s.used, s.idle) == (0, 1)
