"""Red team of the compiled connection() blocks (src/poolwatch/pool/_hot.c).

The compiled blocks take and give back a connection without the pool lock, as a
sequence of C calls that must run no Python code (the GIL is their critical section).
Each test here attacks that claim, or a place where the compiled blocks could differ
from the Python ones: a crash from Python code, Python code that can run in the middle
of the sequence (and so let another thread in), references the Python blocks did not
keep, counts lost across fork(), an allocation failing half-way. Each failed on the
commit that brought the compiled blocks (f5108da). The attacks that found nothing are
kept as guards in test_compiled_redteam_guards.py.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import weakref
from typing import Any

import psycopg
import pytest

from poolwatch import ConnectionPool

# Not built where it would rely on a GIL that is not there; anywhere else a missing
# build fails these tests (their pools must have a desk).
GIL_BUILDS_ONLY = pytest.mark.skipif(
    bool(sysconfig.get_config_var("Py_GIL_DISABLED")), reason="no compiled blocks here"
)
pytestmark = [pytest.mark.db, GIL_BUILDS_ONLY]


@pytest.fixture
def pool(compiled_pool: ConnectionPool[Any]) -> ConnectionPool[Any]:
    return compiled_pool  # tests/pool/conftest.py


def _run_child(code: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter (a crash there must not end the test run)."""
    env = dict(os.environ, REDTEAM_DSN=dsn)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- a block's own attributes: no way to crash the interpreter from Python ---


@pytest.mark.parametrize("attribute", ["_conn", "_checkout"])
def test_deleting_a_block_attribute_cannot_crash_the_interpreter(dsn, attribute):
    # The Python block (__slots__) lets these be deleted; the compiled one read them
    # as never NULL, and its exit dereferenced the NULL pointer (a segfault).
    child = _run_child(
        f"""
        import os
        from poolwatch import ConnectionPool
        with ConnectionPool(os.environ["REDTEAM_DSN"], min_size=1, name="del",
                            kwargs={{"autocommit": True}}) as pool:
            pool.wait(timeout=30)
            assert pool._desk is not None
            block = pool.connection()
            conn = block.__enter__()
            try:
                del block.{attribute}
            except (AttributeError, TypeError) as ex:
                print("refused:", type(ex).__name__)
            else:
                print("deleted")
            block.__exit__(None, None, None)
            # Whatever the block did, the pool still lends and counts.
            with pool.connection():
                pass
            print("done")
        """,
        dsn,
    )
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-2000:])
    assert "refused:" in child.stdout  # the compiled block keeps its fields set
    assert "done" in child.stdout


class _Witness:
    """An object whose finaliser records whether it ran in a half-changed pool."""

    def __init__(self, pool: ConnectionPool[Any], seen: list[str]) -> None:
        self.pool = pool
        self.seen = seen

    def __del__(self) -> None:
        # At rest every connection is idle or checked out; with the lock free, one
        # that is neither means a take or give-back is half done.
        pool = self.pool
        idle, out = len(pool._idle), len(pool._out)
        if not pool._lock.locked() and idle + out != pool._nconns:
            self.seen.append(f"ran mid-section: idle={idle} out={out} of {pool._nconns}")


def test_a_block_field_cannot_carry_python_code_into_the_critical_section(pool):
    # The compiled enter replaces the block's _checkout inside its critical section:
    # an object with a finaliser stored there would run Python code in the middle
    # of the take (idle popped, _out not yet written), with the pool lock free.
    seen: list[str] = []
    block = pool.connection()
    try:
        block._checkout = _Witness(pool, seen)
    except TypeError:
        pass  # refused: only a float (a lending token) or None belongs there
    with block:
        pass
    with pool.connection():
        pass
    assert seen == []
    try:
        block._conn = _Witness(pool, seen)
    except TypeError:
        pass
    else:
        with pytest.raises(RuntimeError, match="already open"):
            block.__enter__()
        block._conn = None
    assert seen == []
    assert pool.aggregates().requests == 2


# --- Python code hidden in the connection class ---


class _HashingConnection(psycopg.Connection[Any]):
    """A connection class with its own __hash__, as a user's subclass may have.

    The pool keys its checked-out list by connection: the hash runs on every take and
    give-back. Armed, it lets another thread in (by waiting for it) when it finds
    itself running while the pool lock is free.
    """

    pool: Any = None
    armed = False
    unlocked = threading.Event()
    resume = threading.Event()
    holds_then: int | None = None  # the hold times recorded when it ran unlocked

    def __hash__(self) -> int:
        cls = type(self)
        if cls.armed and not cls.pool._lock.locked():
            cls.armed = False
            cls.holds_then = _holds_recorded(cls.pool)
            cls.unlocked.set()
            cls.resume.wait(30)
        return object.__hash__(self)


def _holds_recorded(pool: Any) -> int:
    desk = pool._desk
    return pool._agg.use.count + len(pool._holds) + (desk.held if desk is not None else 0)


def test_a_connection_class_with_a_python_hash_cannot_let_close_in_mid_return(dsn):
    # The compiled return ran the Python __hash__ (its `del _out[conn]`) after it had
    # added the hold time and with the pool lock free: another thread could close the
    # pool there, and the return then put the connection on the idle list of the
    # closed pool, where nothing ever closes it. The block's read of its token (a
    # look-up in _out) may hash it with the lock free, before the return starts: the
    # test closes the pool there, and the return must still close the connection.
    cls = _HashingConnection
    cls.unlocked.clear()
    cls.resume.clear()
    cls.holds_then = None
    holds_before: list[int] = []
    used: list[Any] = []
    pool = ConnectionPool(
        dsn,
        min_size=1,
        name="hashing",
        connection_class=cls,
        kwargs={"autocommit": True},
        open=True,
    )
    try:
        pool.wait(timeout=30)
        cls.pool = pool

        def borrower() -> None:
            with pool.connection() as conn:
                used.append(conn)
                holds_before.append(_holds_recorded(pool))
                cls.armed = True

        t = threading.Thread(target=borrower, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while t.is_alive() and not cls.unlocked.is_set() and time.monotonic() < deadline:
            cls.unlocked.wait(0.05)
        if cls.unlocked.is_set():  # Python code ran in the return's critical section
            pool.close()
        cls.resume.set()
        t.join(timeout=30)
        assert not t.is_alive()
    finally:
        cls.armed = False
        cls.resume.set()
        pool.close()
        cls.pool = None
    assert len(used) == 1
    # A closed pool closes every connection it lent when it comes back.
    assert used[0].closed, "a connection returned to a closed pool was left open"
    assert len(pool._idle) == 0
    # If the hash ran with the lock free, the return had not begun: no hold time yet.
    assert cls.holds_then is None or cls.holds_then == holds_before[0], (
        "the connection's __hash__ ran with the pool lock free in the middle of a return"
    )


# --- references: the compiled blocks keep nothing alive the Python ones did not ---


def test_an_open_pool_dropped_without_close_is_freed_at_once(dsn):
    # The Python blocks keep no reference to the pool once they end, so an open pool
    # dropped without close() is freed by its reference count, and its __del__ stops
    # its worker threads. The desk referenced the pool (and the pool its desk): the
    # cycle kept the pool, its threads and its server connections until a full
    # garbage collection, which may never come (or gc.disable()).
    threads_before = threading.active_count()
    pool = ConnectionPool(dsn, min_size=2, name="dropped", open=True)
    pool.wait(timeout=30)
    assert pool._desk is not None
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    block = pool.connection()  # a block never entered holds the pool, as in Python
    del conn
    ref = weakref.ref(pool)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del pool
        assert ref() is not None  # the block keeps it
        del block
        assert ref() is None, "the dropped pool is kept alive by a reference cycle"
    finally:
        if was_enabled:
            gc.enable()
    # Its __del__ ran: the workers were told to stop.
    deadline = time.monotonic() + 30
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before


# --- fork ---


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_keeps_the_counts_of_the_compiled_blocks(pool):
    # The compiled blocks count their requests in the desk until a reader folds them
    # into the pool; the child drops the desk (it holds the old lock): dropped with
    # it, the requests made before the fork vanished from the child's counters.
    blocks = 25  # no reader: nothing folds them before the fork
    before = pool.get_stats().get("requests_num", 0)  # reported once non-zero
    for _ in range(blocks):
        with pool.connection():
            pass
    assert pool._desk.instant == blocks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its counters, then leave without cleanup
        try:
            stats = pool.get_stats()
            agg = pool.aggregates()
            reported = stats.get("requests_num", 0)  # left out while zero
            os.write(write_end, f"{reported} {agg.requests} {agg.use.count}".encode())
        except BaseException as ex:
            os.write(write_end, repr(ex).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        child = f.read()
    os.waitpid(pid, 0)
    expected = before + blocks
    assert pool.get_stats()["requests_num"] == expected
    assert child.split() == [str(expected), str(expected), str(pool.aggregates().use.count)]


# --- an allocation failing inside the critical section ---


def _require_testcapi() -> None:
    """CPython's _testcapi (its fault injection); in CI a missing one fails the test."""
    try:
        import _testcapi  # noqa: F401
    except ImportError:
        message = "this CPython has no _testcapi (its test modules are not installed)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_a_failed_allocation_leaves_the_pool_as_it_was(dsn):
    # _testcapi.set_nomemory makes the k-th allocation from now on fail (CPython's
    # own fault injection). Scanning k over the allocations a take or a give-back
    # makes must never lose a connection: each attempt either completes or raises
    # MemoryError with the pool unchanged. The compiled take popped the idle
    # connection before it wrote _out, whose growth can fail: the connection was then
    # neither idle nor checked out, for good. (Nine connections stay checked out so
    # that _out is past the size whose tables come from a free list, and the blocks'
    # methods are called unbound, which allocates nothing before them. Python code,
    # which any failed allocation can interrupt anywhere, is not what this tests.)
    _require_testcapi()
    child = _run_child(
        """
        import os
        import _testcapi
        from poolwatch import ConnectionPool

        SIZE, HELD = 12, 9
        pool = ConnectionPool(os.environ["REDTEAM_DSN"], min_size=SIZE, name="nomem",
                              kwargs={"autocommit": True}, open=True)
        pool.wait(timeout=60)
        assert pool._desk is not None
        held = [pool.connection() for _ in range(HELD)]
        held_conns = [block.__enter__() for block in held]
        enter, exit_ = type(held[0]).__enter__, type(held[0]).__exit__

        def consistent(lent):
            idle, out = list(pool._idle), list(pool._out)
            assert pool._nconns == SIZE and len(idle) + len(out) == SIZE, (len(idle), len(out))
            assert [c for c in idle if c in out] == []
            assert out == held_conns + ([lent] if lent is not None else []), (out, lent)

        failed = {"enter": 0, "exit": 0}
        done = 0
        for side in ("enter", "exit"):  # one side scanned at a time
            for k in range(6):
                for i in range(300):
                    if i % 50 == 0:
                        # A reader folds the desk's counts now and then, as in use.
                        pool.aggregates()
                    block = pool.connection()
                    if side == "enter":
                        _testcapi.set_nomemory(k, k + 1)
                    try:
                        conn = enter(block)
                    except MemoryError:
                        conn = None
                    finally:
                        _testcapi.remove_mem_hooks()
                    if conn is None:
                        failed["enter"] += 1
                        assert block._conn is None
                        consistent(None)
                        continue
                    consistent(conn)
                    if side == "exit":
                        _testcapi.set_nomemory(k, k + 1)
                    try:
                        exit_(block, None, None, None)
                    except MemoryError:
                        _testcapi.remove_mem_hooks()
                        failed["exit"] += 1
                        consistent(conn)  # still this block's: its exit can run again
                        assert block._conn is conn
                        exit_(block, None, None, None)
                    finally:
                        _testcapi.remove_mem_hooks()
                    consistent(None)
                    done += 1
        for block in held:
            block.__exit__(None, None, None)
        agg = pool.aggregates()
        assert agg.use.count == done + HELD, (agg.use.count, done)
        assert agg.requests == done + HELD, (agg.requests, done)
        pool.close()
        print("ok", failed["enter"], failed["exit"])
        """,
        dsn,
    )
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-3000:])
    word, enter_failures, exit_failures = child.stdout.split()
    # The scan reached failures in the take, or it proved nothing. The give-back
    # allocates nothing (its hold time goes to the desk's C counts, the deque reuses
    # its blocks), so
    # no failure can be injected there: if one could, it must leave the pool as it was.
    assert word == "ok" and int(enter_failures) > 0 and int(exit_failures) == 0, child.stdout
