"""Call sites on the fast checkout path: right names, cheap caches, nothing left behind.

Each test knows the line of every checkout it makes (``inspect``) and compares the site
the pool recorded with it, on the sync and the async pool, through ``getconn`` and
``connection()``, directly and through plumbing written as a generator.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import gc
import inspect
import time

import pytest

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.insight.activity import unwatch, watch
from poolwatch.insight.callsites import SiteFinder

pytestmark = pytest.mark.db

HERE = "insight/test_callsites_fast.py"


def site(line: int, function: str) -> str:
    return f"{HERE}:{line} in {function}"


def held_sites(pool) -> list[str | None]:
    return [c.site for c in pool.checkouts().checkouts]


def take_two(pool):
    """Two checkouts from two lines of one function: one code object, two sites."""
    first_line = inspect.currentframe().f_lineno + 1
    a = pool.getconn()
    second_line = inspect.currentframe().f_lineno + 1
    b = pool.getconn()
    return a, b, first_line, second_line


def test_call_sites_keep_the_fast_path_and_name_each_line(dsn):
    with ConnectionPool(dsn, min_size=2, name="fast-sites") as pool:
        pool.wait()
        assert pool._fast_checkout
        watch(pool, call_sites=True)
        try:
            # attribution no longer sends every checkout down the general path
            assert pool._fast_checkout
            for _ in range(3):  # the first round fills the caches, the others read them
                a, b, line_a, line_b = take_two(pool)
                assert held_sites(pool) == [site(line_a, "take_two"), site(line_b, "take_two")]
                pool.putconn(a)
                assert held_sites(pool) == [site(line_b, "take_two")]
                pool.putconn(b)
                # the fast return forgot the site with the checkout
                assert pool._sites == {}
            line = inspect.currentframe().f_lineno + 1
            with pool.connection():
                assert held_sites(pool) == [
                    site(line, "test_call_sites_keep_the_fast_path_and_name_each_line")
                ]
            assert pool._sites == {}
        finally:
            unwatch(pool)


def test_async_call_sites_keep_the_fast_path(dsn):
    async def take(pool) -> tuple[object, int]:
        line = inspect.currentframe().f_lineno + 1
        conn = await pool.getconn()
        return conn, line

    async def borrow(pool) -> tuple[list[str | None], int]:
        line = inspect.currentframe().f_lineno + 1
        async with pool.connection():
            held = held_sites(pool)
        return held, line

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, name="fast-sites-async") as pool:
            await pool.wait()
            watch(pool, call_sites=True)
            try:
                assert pool._fast_checkout
                for _ in range(3):
                    conn, line = await take(pool)
                    assert held_sites(pool) == [site(line, "take")]
                    await pool.putconn(conn)
                    assert pool._sites == {}
                    held, line = await borrow(pool)
                    assert held == [site(line, "borrow")]
                    assert pool._sites == {}
            finally:
                unwatch(pool)

    asyncio.run(main())


# A company's database helper written as a generator: once it has yielded, its frame
# has no caller any more, so the site must be found while the checkout is under way.
_HELPERS = {"__name__": "mycompany.db", "contextlib": contextlib}
exec(
    "@contextlib.contextmanager\n"
    "def transaction(pool):\n"
    "    with pool.connection() as conn:\n"
    "        with conn.transaction():\n"
    "            yield conn\n",
    _HELPERS,
)


def test_the_site_is_the_with_line_through_generator_plumbing(dsn):
    with ConnectionPool(dsn, min_size=1, name="gen-sites") as pool:
        pool.wait()
        insight = watch(pool, call_sites=True, skip=["mycompany"])
        try:
            line = inspect.currentframe().f_lineno + 1
            with _HELPERS["transaction"](pool) as conn:
                conn.execute("SELECT 1")
                # the borrower has moved on to later lines: the site stays where it took
                time.sleep(0.1)
                held = held_sites(pool)
            time.sleep(0.05)
        finally:
            unwatch(pool)
    want = site(line, "test_the_site_is_the_with_line_through_generator_plumbing")
    assert held == [want]
    (row,) = [r for r in insight.table.rows() if r.site == want]
    assert row.count == 1
    assert row.idle_in_transaction_seconds > 0.0


def test_tracking_switched_while_a_connection_is_out(dsn):
    with ConnectionPool(dsn, min_size=1, name="switch-sites") as pool:
        pool.wait()
        conn = pool.getconn()  # taken while attribution is off
        watch(pool, call_sites=True)
        try:
            assert held_sites(pool) == [None]
            pool.putconn(conn)  # its return has no site to forget, and must not fail
            line = inspect.currentframe().f_lineno + 1
            conn = pool.getconn()
            want = site(line, "test_tracking_switched_while_a_connection_is_out")
            assert held_sites(pool) == [want]
        finally:
            unwatch(pool)
        # turned off while out: forgotten at once, and the return still works
        assert held_sites(pool) == [None]
        pool.putconn(conn)
        assert pool._sites == {}


def test_cached_names_survive_code_objects_coming_and_going():
    # Code objects made and dropped one after the other are often given the same id;
    # a cache keyed by id must keep each code object alive while it remembers it, or
    # a new function would inherit the name of a dead one.
    finder = SiteFinder()
    for i in range(200):
        namespace = {"__name__": "generated"}
        source = f"def f{i}(find):\n    return find()\n"
        exec(compile(source, f"/gen/v{i}/mod{i}.py", "exec"), namespace)
        assert namespace[f"f{i}"](finder) == f"v{i}/mod{i}.py:2 in f{i}"
        del namespace
        gc.collect()


def test_getconn_run_as_a_task_of_its_own_is_unknown(dsn):
    # asyncio.wait_for runs getconn() as a task of its own: on that task's stack the
    # pool's frame is the outermost one, with nobody above it to name
    async def main() -> list[str | None]:
        async with AsyncConnectionPool(dsn, min_size=1, name="no-caller") as pool:
            await pool.wait()
            watch(pool, call_sites=True)
            try:
                conn = await asyncio.wait_for(pool.getconn(), 10)
                held = held_sites(pool)
                await pool.putconn(conn)
                assert pool.checkouts().checkouts == ()
            finally:
                unwatch(pool)
            return held

    assert asyncio.run(main()) == ["(unknown)"]


def test_a_thread_whose_target_is_getconn_is_unknown(dsn):
    # started with the bare thread API, getconn() is the thread's outermost frame
    with ConnectionPool(dsn, min_size=1, name="bare-thread") as pool:
        pool.wait()
        watch(pool, call_sites=True)
        try:
            _thread.start_new_thread(pool.getconn, ())
            deadline = time.monotonic() + 10
            while not pool.checkouts().checkouts and time.monotonic() < deadline:
                time.sleep(0.01)
            (held,) = pool.checkouts().checkouts
            site_seen = held.site
            pool.putconn(held.connection)
        finally:
            unwatch(pool)
    assert site_seen == "(unknown)"


def test_sites_stay_right_when_borrowing_styles_alternate(dsn):
    # the finder remembers the last plumbing frame met right above the pool and steps
    # over it next time: alternating styles must not make it skip a borrower's frame
    def through_getconn(pool) -> tuple[str | None, str]:
        line = inspect.currentframe().f_lineno + 1
        conn = pool.getconn()
        (held,) = held_sites(pool)
        pool.putconn(conn)
        return held, site(line, "through_getconn")

    def through_connection(pool) -> tuple[str | None, str]:
        line = inspect.currentframe().f_lineno + 1
        with pool.connection():
            (held,) = held_sites(pool)
        return held, site(line, "through_connection")

    def through_helper(pool) -> tuple[str | None, str]:
        line = inspect.currentframe().f_lineno + 1
        with _HELPERS["transaction"](pool):
            (held,) = held_sites(pool)
        return held, site(line, "through_helper")

    with ConnectionPool(dsn, min_size=1, name="mixed-sites") as pool:
        pool.wait()
        watch(pool, call_sites=True, skip=["mycompany"])
        try:
            order = [through_connection, through_getconn, through_helper, through_connection]
            for borrow in order * 3:
                held, want = borrow(pool)
                assert held == want, borrow.__name__
        finally:
            unwatch(pool)
