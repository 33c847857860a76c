"""Red team of the compiled connection() blocks: the attacks that found nothing.

Kept as guards of what the compiled blocks (src/poolwatch/pool/_hot.c) claim; the
attacks that found something are in test_compiled_redteam.py. Many threads preempted
every microsecond racing the blocks with everything the pool does, the collector
running at every allocation, memory over every path, the fast-path switches, and a
signal handler raising inside blocks.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from poolwatch import ConnectionPool
from poolwatch.observe import PoolObserver

from .test_compiled_redteam import GIL_BUILDS_ONLY, _run_child, _Witness

pytestmark = [pytest.mark.db, GIL_BUILDS_ONLY]


@pytest.fixture
def pool(compiled_pool: ConnectionPool[Any]) -> ConnectionPool[Any]:
    return compiled_pool  # tests/pool/conftest.py


# --- many threads preempted every microsecond, racing everything the pool does ---


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


def test_memory_stays_flat_over_many_blocks_on_every_path(dsn):
    # sys.getallocatedblocks counts the interpreter's live memory blocks: a reference
    # lost on any path (fast, fallback, error) would grow it by one or more per round.
    # In a fresh interpreter: in the test run, what other tests left behind (log
    # capture, say) grows it too.
    child = _run_child(
        """
        import gc, os, sys, threading, time
        from poolwatch import ConnectionPool

        def expect(error, action, *args):
            try:
                action(*args)
            except error:
                return
            raise AssertionError(f"{action} did not raise {error}")

        def divide_in(block):
            with block:
                1 / 0

        def enter_twice(block):
            with block:
                block.__enter__()

        def take_one():
            with pool.connection():
                pass

        def one_round(i):
            with pool.connection():  # fast both ways
                pass
            block = pool.connection()
            expect(ZeroDivisionError, divide_in, block)  # exit with an exception
            expect(RuntimeError, enter_twice, block)  # the Python enter refuses
            for name in ("_conn", "_checkout"):
                expect(AttributeError, delattr, block, name)
            expect(TypeError, setattr, block, "_checkout", object())
            expect(TypeError, block.__exit__, None)
            expect(TypeError, pool._desk.lend, 1, 2)
            block.__exit__(None, None, None)  # not open: nothing to do
            with pool._lock:  # busy: an entry now waits in Python
                waiter = threading.Thread(target=take_one)
                waiter.start()
                time.sleep(0.001)
            waiter.join(timeout=30)
            if i % 50 == 0:
                pool.aggregates()  # folds the hold times kept aside

        with ConnectionPool(os.environ["REDTEAM_DSN"], min_size=2, name="flat",
                            kwargs={"autocommit": True}) as pool:
            pool.wait(timeout=30)
            assert pool._desk is not None
            for i in range(200):  # warm: caches, free lists and interned strings settle
                one_round(i)
            gc.collect()
            before = sys.getallocatedblocks()
            for i in range(2000):
                one_round(i)
            gc.collect()
            print(sys.getallocatedblocks() - before)
        """,
        dsn,
    )
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-3000:])
    grown = int(child.stdout)
    assert grown < 500, f"{grown} more memory blocks after 2000 rounds"


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
    # handler raises only in the body. One inside the pool's own Python code, between
    # a lock.acquire() and its try, leaves the lock held: a limit of the Python fast
    # paths, which the compiled ones reach only through their fallbacks.)
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
