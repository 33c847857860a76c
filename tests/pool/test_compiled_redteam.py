"""Red team of the compiled connection() blocks (src/poolwatch/pool/_hot.c).

The compiled blocks take and give back a connection without the pool lock, as a
sequence of C calls that must run no Python code (the GIL is their critical section).
Each test here attacks that claim, or a place where the compiled blocks could differ
from the Python ones: a crash from Python code, Python code that can run in the middle
of the sequence (and so let another thread in), references the Python blocks did not
keep, counts lost across fork(), and many threads racing the blocks with everything
else the pool does. Tests that found nothing are kept: they guard the claim.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from poolwatch import ConnectionPool
from poolwatch.observe import PoolObserver

pytestmark = [
    pytest.mark.db,
    # Not built where it would rely on a GIL that is not there; anywhere else a
    # missing build fails these tests (their pools must have a desk).
    pytest.mark.skipif(
        bool(sysconfig.get_config_var("Py_GIL_DISABLED")), reason="no compiled blocks here"
    ),
]


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(dsn, min_size=2, name="redteam", kwargs={"autocommit": True}) as p:
        p.wait(timeout=30)
        assert p._desk is not None
        yield p


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

    def __hash__(self) -> int:
        cls = type(self)
        if cls.armed and not cls.pool._lock.locked():
            cls.armed = False
            cls.unlocked.set()
            cls.resume.wait(30)
        return object.__hash__(self)


def test_a_connection_class_with_a_python_hash_cannot_let_close_in_mid_return(dsn):
    # The compiled return ran the Python __hash__ (its `del _out[conn]`) after it had
    # added the hold time and with the pool lock free: another thread could close the
    # pool there, and the return then put the connection on the idle list of the
    # closed pool, where nothing ever closes it.
    cls = _HashingConnection
    cls.unlocked.clear()
    cls.resume.clear()
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
    assert not cls.unlocked.is_set(), "the connection's __hash__ ran with the pool lock free"


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
    blocks = 25  # fewer than HOLDS_FOLD_AT: nothing folds them before the fork
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
                        # A reader folds the hold times: no give-back reaches the
                        # fold, which is Python code (where any allocation may fail).
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
    # The scan reached failures on both sides, or it proved nothing.
    assert word == "ok" and int(enter_failures) > 0 and int(exit_failures) > 0, child.stdout


# --- many threads preempted every microsecond, racing everything the pool does ---


@pytest.fixture
def preempt_often() -> Iterator[None]:
    """Switch threads about every microsecond (the default is 5 ms)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


RACE_SIZE = 4
RACE_BORROWERS = 8  # the even ones use blocks, the odd ones getconn/putconn
RACE_OPS = 150


class _Race:
    """What the threads of the race saw, counted by themselves."""

    def __init__(self) -> None:
        self.owners: dict[int, int] = {}  # id(connection) -> the borrower holding it
        self.problems: list[str] = []
        self.ok = 0
        self.refused = 0
        self.lock = threading.Lock()  # for the counts only, never around a pool call

    def hold(self, conn: Any, me: int, i: int) -> None:
        if self.owners.setdefault(id(conn), me) != me:  # one C call: atomic
            self.problems.append(f"{conn} lent to {me} while {self.owners[id(conn)]} holds it")
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.problems.append(f"{conn} lent with a transaction open")
        if i % 25 == 0:
            conn.execute("SELECT 1")  # real I/O now and then: the GIL is released
        del self.owners[id(conn)]

    def borrower(self, pool: ConnectionPool[Any], me: int) -> None:
        for i in range(RACE_OPS):
            try:
                if me % 2 == 0:
                    with pool.connection() as conn:
                        self.hold(conn, me, i)
                else:
                    conn = pool.getconn()
                    try:
                        self.hold(conn, me, i)
                    finally:
                        pool.putconn(conn)
            except psycopg.OperationalError as ex:  # the pool's errors (PoolClosed...)
                with self.lock:
                    self.refused += 1
                if pool.closed:
                    return
                self.problems.append(f"refused while open: {ex!r}")
                return
            with self.lock:
                self.ok += 1


def _reader(pool: ConnectionPool[Any], stop: threading.Event, problems: list[str]) -> None:
    """Reads every view until *stop*; no counter may go backwards, no snapshot disagree."""
    from prometheus_client import CollectorRegistry

    from poolwatch.exporter.app import Exporter

    exporter = Exporter([pool], registry=CollectorRegistry(), include_registry=False)
    last = (0, 0, 0, 0.0)
    for i in range(100_000):  # bounded; *stop* ends it long before
        if stop.is_set():
            return
        agg = pool.aggregates()
        stats = pool.get_stats()
        snap = pool.snapshot()
        now = (agg.requests, agg.use.count, stats.get("requests_num", 0), snap.used_seconds_total)
        if any(b < a for a, b in zip(last, now)):
            problems.append(f"a counter went backwards: {last} -> {now}")
        last = now
        if snap.idle + snap.used > snap.size or snap.opening < 0:
            problems.append(f"a snapshot that does not add up: {snap}")
        if i % 20 == 0:
            exporter.metrics_text(openmetrics=False)


def _chaos(pool: ConnectionPool[Any], stop: threading.Event) -> None:
    """Resizes, drains and checks the pool while the blocks run."""
    steps = [
        lambda: pool.resize(RACE_SIZE, RACE_SIZE + 2),
        pool.drain,
        lambda: pool.resize(RACE_SIZE - 1, RACE_SIZE - 1),
        pool.check,
        lambda: pool.resize(RACE_SIZE, RACE_SIZE),
    ]
    for i in range(100_000):  # bounded; *stop* ends it first
        if stop.is_set():
            return
        steps[i % len(steps)]()


def _server_connections(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_blocks_racing_readers_resize_drain_check_and_close_lose_nothing(dsn, preempt_often):
    name = "redteam-race"
    pool = ConnectionPool(
        dsn,
        min_size=RACE_SIZE,
        name=name,
        timeout=60,
        kwargs={"autocommit": True, "application_name": name},
        open=True,
    )
    race = _Race()
    stop = threading.Event()
    try:
        pool.wait(timeout=60)
        assert pool._desk is not None and pool._desk.fast
        # Round one: everything races, then everything must be back and counted once.
        helpers = [
            threading.Thread(target=_reader, args=(pool, stop, race.problems), daemon=True),
            threading.Thread(target=_chaos, args=(pool, stop), daemon=True),
        ]
        borrowers = [
            threading.Thread(target=race.borrower, args=(pool, me), daemon=True)
            for me in range(RACE_BORROWERS)
        ]
        for t in helpers + borrowers:
            t.start()
        for t in borrowers:
            t.join(timeout=300)
            assert not t.is_alive(), "a borrower did not finish"
        stop.set()
        for t in helpers:
            t.join(timeout=120)
            assert not t.is_alive()
        assert race.problems == []
        assert race.ok == RACE_BORROWERS * RACE_OPS and race.refused == 0
        pool.resize(RACE_SIZE, RACE_SIZE)
        pool.wait(timeout=60)
        agg = pool.aggregates()
        snap = pool.snapshot()
        assert agg.requests == race.ok
        assert agg.acquire["ok"].count == race.ok
        assert agg.use.count == race.ok
        assert (snap.used, snap.waiting, snap.idle, snap.size) == (0, 0, RACE_SIZE, RACE_SIZE)
        assert len(pool._out) == 0 and pool._desk.fast
        # Round two: the pool closes under the borrowers' feet.
        race.ok = 0
        borrowers = [
            threading.Thread(target=race.borrower, args=(pool, me), daemon=True)
            for me in range(RACE_BORROWERS)
        ]
        for t in borrowers:
            t.start()
        deadline = time.monotonic() + 60
        while race.ok < RACE_OPS and time.monotonic() < deadline:
            time.sleep(0.005)
        pool.close()
        for t in borrowers:
            t.join(timeout=300)
            assert not t.is_alive(), "a borrower did not finish"
        assert race.problems == []
        assert race.refused > 0, "the pool closed after the borrowers were done"
        assert pool.aggregates().use.count == RACE_BORROWERS * RACE_OPS + race.ok
    finally:
        stop.set()
        pool.close()
    # Closed, the pool keeps no connection: none idle, none open on the server.
    assert len(pool._idle) == 0 and len(pool._out) == 0
    deadline = time.monotonic() + 60
    while _server_connections(dsn, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _server_connections(dsn, name) == 0


# --- the garbage collector and finalisers ---


class _Cycle:
    """Garbage that only the cyclic collector frees: its finaliser runs Python code."""

    def __init__(self, witness: _Witness) -> None:
        self.me = self
        self.witness = witness

    def __del__(self) -> None:
        self.witness.__del__()


def test_no_collection_runs_inside_a_compiled_block(pool):
    # Before 3.12 a collection runs inside whatever allocation crosses the threshold,
    # finalisers and all: a compiled section that allocated a tracked object (a
    # tuple, a dict, a bound method...) could run Python code half-way. With the
    # threshold at 1 every such allocation collects; the garbage's finalisers record
    # any pool they find half-changed.
    seen: list[str] = []
    witness = _Witness(pool, seen)
    collections = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal collections
        if phase == "start":
            collections += 1

    old_threshold = gc.get_threshold()
    gc.callbacks.append(count)
    try:
        gc.collect()
        gc.set_threshold(1, 1, 1)
        for i in range(3000):
            _Cycle(witness)  # garbage awaiting the collector
            with pool.connection() as conn:
                _Cycle(witness)
                if i % 100 == 0:
                    conn.execute("SELECT 1")
    finally:
        gc.set_threshold(*old_threshold)
        gc.callbacks.remove(count)
        gc.collect()
    assert collections >= 1000  # the garbage was collected, over and over
    assert seen == []
    assert pool.aggregates().use.count == 3000


# --- no leak: memory stays flat over many blocks, on every path ---


def test_memory_stays_flat_over_many_blocks_on_every_path(pool):
    # sys.getallocatedblocks counts the interpreter's live memory blocks: a reference
    # lost on any path (fast, fallback, error) would grow it by one or more per round.
    def take_one() -> None:
        with pool.connection():
            pass

    def one_round(i: int) -> None:
        with pool.connection():  # fast both ways
            pass
        block = pool.connection()
        with pytest.raises(ZeroDivisionError):
            with block:
                1 / 0  # noqa: B018
        with pytest.raises(RuntimeError):  # entered twice: the Python enter refuses
            with block:
                block.__enter__()
        for name in ("_conn", "_checkout"):
            with pytest.raises(AttributeError):
                delattr(block, name)
        with pytest.raises(TypeError):
            block._checkout = object()
        with pytest.raises(TypeError):
            block.__exit__(None)
        with pytest.raises(TypeError):
            pool._desk.lend(1, 2)
        block.__exit__(None, None, None)  # not open: nothing to do
        with pool._lock:  # busy: an entry now waits in Python
            waiter = threading.Thread(target=take_one)
            waiter.start()
            time.sleep(0.001)
        waiter.join(timeout=30)
        if i % 50 == 0:
            pool.aggregates()  # folds the hold times kept aside

    for i in range(200):  # warm: caches, free lists and interned strings settle
        one_round(i)
    gc.collect()
    before = sys.getallocatedblocks()
    rounds = 2000
    for i in range(rounds):
        one_round(i)
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert grown < rounds // 4, f"{grown} more memory blocks after {rounds} rounds"


# --- every switch of the fast path is honoured by the compiled blocks ---


class _Recorder(PoolObserver):
    """A PoolObserver that counts what it is told."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released = 0

    def on_acquire(self, wait_seconds: float, outcome: str, queued: bool) -> None:
        self.acquired += outcome == "ok"

    def on_release(self, use_seconds: float) -> None:
        self.released += 1


def test_an_observer_hears_of_every_compiled_block(dsn):
    recorder = _Recorder()
    with ConnectionPool(dsn, min_size=1, name="observed", observer=recorder) as pool:
        pool.wait(timeout=30)
        assert pool._desk is not None and not pool._desk.fast
        for _ in range(50):
            with pool.connection():
                pass
    assert (recorder.acquired, recorder.released) == (50, 50)


def test_call_sites_turned_on_and_off_reach_the_compiled_blocks(pool):
    def site_in_block() -> str | None:
        with pool.connection() as conn:
            (checkout,) = pool.checkouts().checkouts
            assert checkout.connection is conn
            return checkout.site

    assert site_in_block() is None and pool._desk.fast
    pool.track_call_sites(lambda: "redteam-site")
    assert not pool._desk.fast
    assert site_in_block() == "redteam-site"
    pool.track_call_sites(None)
    assert pool._desk.fast
    assert site_in_block() is None
    assert pool.aggregates().use.count == 3


def test_a_shrunk_or_drained_pool_retires_what_compiled_blocks_give_back(pool):
    # The compiled return must leave these to Python: more connections than
    # max_size (one is closed), and a drained connection (replaced).
    with pool.connection() as first, pool.connection() as second:
        pool.resize(1, 1)
        pool.drain()
    # Both retired on return (a worker closes them), none kept.
    deadline = time.monotonic() + 30
    while not (first.closed and second.closed) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.closed and second.closed
    pool.wait(timeout=30)
    snap = pool.snapshot()
    assert (snap.size, snap.used, snap.idle) == (1, 0, 1)
    assert pool._idle[0] not in (first, second)


# --- an interruption (a signal handler raising) inside a block ---


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers here")
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-blocks", "python-blocks"])
def test_a_signal_raising_inside_blocks_loses_no_connection(dsn, compiled):
    # KeyboardInterrupt (or any handler that raises) inside a block's body: the exit
    # gets the exception and goes to Python, which rolls back and returns. Run in a
    # child with a time limit: a pool lock left held would hang it for good. (The
    # handler raises only in the body: an interruption inside the pool's own Python
    # code, between a lock.acquire() and its try, is another matter: see the report
    # of this red team.)
    child = _run_child(
        f"""
        import os, signal
        from poolwatch import ConnectionPool

        class Interrupt(BaseException):
            pass

        armed = False
        hits = 0

        def handler(signum, frame):
            global armed
            if armed:
                armed = False
                raise Interrupt

        signal.signal(signal.SIGALRM, handler)
        with ConnectionPool(os.environ["REDTEAM_DSN"], min_size=2, name="sig",
                            kwargs={{"autocommit": True}}) as pool:
            pool.wait(timeout=30)
            assert pool._desk is not None
            if not {compiled}:
                pool._desk = None
            for i in range(3000):
                signal.setitimer(signal.ITIMER_REAL, 1e-6 * (i % 100 + 1))
                try:
                    with pool.connection() as conn:
                        armed = True
                        if i % 100 == 0:
                            conn.execute("SELECT 1")
                        for _ in range(i % 1000):  # Python code the handler lands in
                            pass
                        armed = False
                except Interrupt:
                    hits += 1
                signal.setitimer(signal.ITIMER_REAL, 0)
                armed = False
            agg = pool.aggregates()
            snap = pool.snapshot()
            assert (snap.used, snap.idle, snap.size) == (0, 2, 2), snap
            assert agg.use.count == agg.acquire["ok"].count == 3000, agg
            print("ok", hits)
        """,
        dsn,
    )
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-3000:])
    word, hits = child.stdout.split()
    assert word == "ok" and int(hits) > 0  # the interruptions landed
