"""The async waiters' deadlines, kept on one heap and one timer per event loop.

`AWaiter.wait` no longer arms a timer per waiter: its loop's `_Deadlines` does, for
the earliest deadline. These tests pin what that must keep: a short timeout queued
behind a long one still ends on time, deadlines on several loops stay apart, and
waits that end early do not pile up on the heap.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from poolwatch import AsyncConnectionPool, PoolTimeout
from poolwatch._acompat import _DEADLINES_ATTR

pytestmark = pytest.mark.db


async def _until_waiting(pool: AsyncConnectionPool, n: int) -> None:
    deadline = time.monotonic() + 30
    while pool.snapshot().waiting < n:  # bounded: 30 s
        assert time.monotonic() < deadline, f"{n} requests did not queue"
        await asyncio.sleep(0.005)


async def test_a_short_timeout_behind_a_long_one_ends_on_its_own(dsn):
    async with AsyncConnectionPool(dsn, min_size=1, name="deadline-order") as pool:
        held = await pool.getconn()
        patient = asyncio.create_task(pool.getconn(timeout=60))
        await _until_waiting(pool, 1)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0.2)
        waited = time.monotonic() - t0
        # It ended by its own deadline, not by the patient one's (60 s); 0.2 s at least.
        assert 0.2 <= waited < 30
        assert not patient.done()
        await pool.putconn(held)
        conn = await asyncio.wait_for(patient, 30)
        await pool.putconn(conn)
        agg = pool.aggregates()
    assert agg.acquire["timeout"].count == 1 and agg.acquire["ok"].count == 2


async def test_deadlines_on_another_loop_fire_there(dsn):
    """A request waiting on a second thread's loop times out by that loop's timer."""
    async with AsyncConnectionPool(dsn, min_size=1, name="deadline-loops") as pool:
        held = await pool.getconn()
        outcome: list[str] = []

        async def elsewhere() -> None:
            try:
                await pool.getconn(timeout=0.3)
            except PoolTimeout:
                outcome.append("timeout")

        thread = threading.Thread(target=asyncio.run, args=(elsewhere(),), daemon=True)
        thread.start()
        await asyncio.to_thread(thread.join, 30)
        assert outcome == ["timeout"]
        # This loop's own waiter is unaffected, and is served when the connection comes back.
        mine = asyncio.create_task(pool.getconn(timeout=60))
        await _until_waiting(pool, 1)
        await pool.putconn(held)
        await pool.putconn(await asyncio.wait_for(mine, 30))


async def test_waits_that_end_early_do_not_pile_up(dsn):
    """Hand-offs long before their deadline: the heap stays near the waits going on."""
    async with AsyncConnectionPool(dsn, min_size=2, name="deadline-heap", timeout=60) as pool:

        async def borrow(times: int) -> None:
            for _ in range(times):
                conn = await pool.getconn()
                await asyncio.sleep(0)
                await pool.putconn(conn)

        await asyncio.wait_for(asyncio.gather(*(borrow(200) for _ in range(16))), 60)
        deadlines = getattr(asyncio.get_running_loop(), _DEADLINES_ATTR)
        waits = pool.aggregates().waits
    assert waits > 1000  # the test made the pool hand off, thousands of times
    assert deadlines.live == 0
    assert len(deadlines._heap) <= 2 * 16 + 64 + 1
