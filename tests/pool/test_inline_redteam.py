"""Attacks on the fast paths inlined into connection() blocks and the deferred hold times.

Each test here either found a fault in commit 2006668 (the inlined block entry and
exit, `BasePool._holds`, `_idle_ran_out`) and now guards its fix, or tried an attack
that found nothing and is kept so that it keeps finding nothing.
"""

from __future__ import annotations

import asyncio

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
