"""Attacks on the fast paths inlined into connection() blocks and the deferred hold times.

Each test here either found a fault in commit 2006668 (the inlined block entry and
exit, `BasePool._holds`, `_idle_ran_out`) and now guards its fix, or tried an attack
that found nothing and is kept so that it keeps finding nothing.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool

from ..acompat import wait_until

pytestmark = pytest.mark.db


# --- the switch: what turns the inlined paths on and off ---


def test_a_pool_opened_by_its_with_statement_takes_the_inlined_paths(dsn):
    # `with ConnectionPool(dsn) as pool:` (the form psycopg_pool's documentation
    # shows) opens the pool in the constructor with the implicit-open warning owed,
    # then the with statement cancels that warning. The switch must follow, or every
    # block of such a pool goes through getconn()/putconn() for good.
    with ConnectionPool(dsn, min_size=1, name="red5-with") as pool:
        assert not pool._open_implicit  # no warning owed any more ...
        assert pool._fast_borrow  # ... so nothing keeps the inlined paths off
        wait_until(lambda: pool.snapshot().idle == 1, timeout=30)
        with pool.connection() as conn:
            assert pool._out[conn] is conn._pw_lending


async def test_an_async_pool_opened_by_its_with_statement_takes_the_inlined_paths(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, name="red5-awith") as pool:
        assert not pool._open_implicit
        assert pool._fast_borrow
        for _ in range(1000):  # bounded: 10 s
            if pool.snapshot().idle == 1:
                break
            await asyncio.sleep(0.01)
        async with pool.connection() as conn:
            assert pool._out[conn] is conn._pw_lending


# --- threads racing one block ---


def _enter_and_leave(block, start: threading.Barrier, entered: list[object]) -> None:
    """Enter *block* a few times (refusals are expected), noting each connection got."""
    start.wait()
    for _ in range(3):  # again: an entry may race the previous exit
        try:
            with block as conn:
                entered.append(conn)
        except RuntimeError:  # refused: the context is open in another thread
            pass


def test_one_block_entered_by_two_threads_lends_one_connection(dsn):
    # A connection() context entered while it is open must be refused: a second
    # entry that also got a connection would overwrite the first lending, and that
    # connection would never come back. The inlined entry takes the connection
    # between the test "is it open?" and the store that says so: threads preempted
    # every microsecond both pass the test and both borrow. An exit racing the next
    # entry must also end its own lending, not the one the entry stores.
    rounds, nthreads = 400, 4
    with ConnectionPool(dsn, min_size=nthreads, name="red5-shared") as pool:
        pool.wait()
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for _ in range(rounds):
                block = pool.connection()
                start = threading.Barrier(nthreads, timeout=30)
                entered: list[object] = []
                threads = [
                    threading.Thread(target=_enter_and_leave, args=(block, start, entered))
                    for _ in range(nthreads)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                    assert not t.is_alive()
                assert entered  # someone got in
                snap = pool.snapshot()
                # Every connection lent came back: none is left checked out.
                assert (snap.used, snap.idle) == (0, nthreads), f"{len(entered)} entries"
        finally:
            sys.setswitchinterval(old_interval)
