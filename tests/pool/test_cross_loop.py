"""An async pool used from two event loops (two threads) hands connections across them.

A connection returned on one loop must wake a request waiting on the other at once,
not when the waiter's timeout runs out.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from poolwatch import AsyncConnectionPool, PoolClosed

from ..acompat import await_until

pytestmark = pytest.mark.db

# Long, so that a lost wake-up (served only when the wait times out) is unmistakable;
# the tests give the hand-off far less than this, generous for a loaded machine.
WAIT = 60.0
HANDOFF_BOUND = 20.0


class OtherLoop:
    """A second event loop running in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def other_loop():
    other = OtherLoop()
    yield other
    other.stop()


async def test_return_on_pool_loop_wakes_waiter_on_other_loop(dsn, other_loop):
    async with AsyncConnectionPool(dsn, min_size=1, timeout=WAIT) as pool:
        await pool.wait(timeout=30)
        held = await pool.getconn()

        async def borrow_elsewhere():
            t0 = time.monotonic()
            conn = await pool.getconn(timeout=WAIT)
            waited = time.monotonic() - t0
            await pool.putconn(conn)
            return conn, waited

        fut = other_loop.submit(borrow_elsewhere())
        await await_until(lambda: pool.snapshot().waiting == 1, timeout=10)
        await pool.putconn(held)
        conn, waited = await asyncio.wait_for(asyncio.wrap_future(fut), HANDOFF_BOUND)
        assert conn is held
        assert waited < HANDOFF_BOUND
        await await_until(lambda: pool.snapshot().idle == 1, timeout=10)


async def test_return_on_other_loop_wakes_waiter_on_pool_loop(dsn, other_loop):
    async with AsyncConnectionPool(dsn, min_size=1, timeout=WAIT) as pool:
        await pool.wait(timeout=30)
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn(timeout=WAIT))
        await await_until(lambda: pool.snapshot().waiting == 1, timeout=10)

        async def give_back_later():
            await asyncio.sleep(0.2)  # by then this loop is asleep, waiting
            await pool.putconn(held)

        t0 = time.monotonic()
        # Not awaited here: nothing but the hand-off itself may wake this loop.
        returned = other_loop.submit(give_back_later())
        conn = await asyncio.wait_for(waiter, HANDOFF_BOUND)
        assert returned.result(10) is None
        assert conn is held
        assert time.monotonic() - t0 < HANDOFF_BOUND
        await pool.putconn(conn)


async def test_return_with_reset_on_other_loop_reaches_the_workers(pg, other_loop):
    """The reset runs on the pool's workers: queuing it from another loop must wake them."""
    app = f"xl-{uuid.uuid4().hex[:10]}"
    resets = []

    async def reset(conn):
        resets.append(conn)

    async def open_pool():
        pool = AsyncConnectionPool(
            pg.dsn(application_name=app), min_size=1, timeout=WAIT, reset=reset, open=False
        )
        await pool.open(wait=True, timeout=30)
        return pool

    # The pool lives on the other loop, which has nothing else to do: only a wake-up
    # sent from this thread can make one of its workers run the reset.
    pool = other_loop.submit(open_pool()).result(40)
    try:
        conn = await pool.getconn(timeout=10)
        await pool.putconn(conn)
        await await_until(lambda: pool.snapshot().idle == 1, timeout=HANDOFF_BOUND)
        assert len(resets) == 1
    finally:
        other_loop.submit(pool.close()).result(30)


async def test_close_from_another_loop_is_refused_clearly(dsn, other_loop):
    async with AsyncConnectionPool(dsn, min_size=1) as pool:
        await pool.wait(timeout=30)
        with pytest.raises(RuntimeError, match="event loop"):
            other_loop.submit(pool.close()).result(10)
        assert not pool.closed
        async with pool.connection(timeout=10) as conn:
            await conn.execute("SELECT 1")


async def test_pool_outliving_its_loop_can_still_be_closed_cleanly(pg):
    """The loop that opened the pool ended; a return queued since is run by close()."""
    app = f"xl-{uuid.uuid4().hex[:10]}"

    async def reset(conn):
        pass

    async def open_pool():
        pool = AsyncConnectionPool(
            pg.dsn(application_name=app), min_size=1, reset=reset, open=False
        )
        await pool.open(wait=True, timeout=30)
        return pool, await pool.getconn(timeout=10)

    pool, conn = await asyncio.to_thread(asyncio.run, open_pool())  # that loop is gone now
    await pool.putconn(conn)  # queued for workers that ended with their loop
    await pool.close(timeout=5)
    s = pool.snapshot()
    assert (s.size, s.used, s.idle) == (0, 0, 0)
    assert conn.closed
    await await_until(lambda: pg.backends(app) == 0, timeout=15)


async def test_a_pool_whose_loop_ended_refuses_to_lend_clearly(pg):
    """An async pool opened under one asyncio.run() and used under the next: its workers
    ended with their loop, so a lent connection could never come back (a return with a
    reset, a replacement, growth all need them). Say so at once, instead of lending it
    and then timing out on every request (size=1/1, used=1) for the pool's whole life.
    """
    app = f"xl-{uuid.uuid4().hex[:10]}"

    async def reset(conn):
        pass

    async def open_pool():
        pool = AsyncConnectionPool(
            pg.dsn(application_name=app), min_size=1, max_size=1, reset=reset, open=False
        )
        await pool.open(wait=True, timeout=30)
        return pool

    pool = await asyncio.to_thread(asyncio.run, open_pool())
    try:
        for _ in range(2):
            with pytest.raises(PoolClosed, match=r"event loop .* has ended"):
                async with pool.connection(timeout=3):
                    pass
        assert pool.snapshot().used == 0
    finally:
        await pool.close(timeout=5)
    await await_until(lambda: pg.backends(app) == 0, timeout=15)
