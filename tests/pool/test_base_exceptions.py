"""A BaseException (KeyboardInterrupt, gevent.Timeout, a cancellation) in a callback or a
return loses no connection, kills no worker and leaves the accounting right.

Ground truth is the server's own count of backends (pg_stat_activity), read by the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from poolwatch import (
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    ConnectionPool,
    NullConnectionPool,
)

from ..acompat import await_until, wait_until

pytestmark = pytest.mark.db


class Interrupt(BaseException):
    """Stands in for gevent.Timeout: a BaseException that is not an Exception."""


def app_name() -> str:
    return f"bx-{uuid.uuid4().hex[:10]}"


class RaiseOnce:
    """A callback raising *exc* on its first *times* calls, then doing nothing."""

    def __init__(self, exc: type[BaseException], times: int = 1) -> None:
        self.exc = exc
        self.left = times
        self.calls = 0
        self._lock = threading.Lock()

    def _should_raise(self) -> bool:
        with self._lock:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                return True
            return False

    def __call__(self, conn: psycopg.Connection) -> None:
        if self._should_raise():
            raise self.exc()


class ARaiseOnce(RaiseOnce):
    async def __call__(self, conn: psycopg.AsyncConnection) -> None:  # type: ignore[override]
        if self._should_raise():
            raise self.exc()


def assert_accounts(pool, pg, app: str) -> None:
    """The pool's counts agree with each other and with the server's."""
    s = pool.snapshot()
    a = pool.aggregates()
    assert a.opened - a.closed == s.size, (a.opened, a.closed, s)
    assert s.opening == 0, s
    wait_until(lambda: pg.backends(app) == s.size, timeout=15)


@contextmanager
def backend_stopped(pid: int) -> Iterator[None]:
    """Freeze a server backend (SIGSTOP): whatever the client sends it waits unanswered."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def within(seconds: float, coro):
    """``async with asyncio.timeout()`` around *coro* (wait_for before Python 3.11)."""
    if not hasattr(asyncio, "timeout"):
        return await asyncio.wait_for(coro, seconds)
    async with asyncio.timeout(seconds):
        return await coro


# --- configure ---


def test_keyboard_interrupt_in_configure_sync(pg, caplog_all):
    app = app_name()
    configure = RaiseOnce(KeyboardInterrupt, times=2)
    with ConnectionPool(
        pg.dsn(application_name=app), min_size=2, num_workers=2, configure=configure
    ) as pool:
        pool.wait(timeout=30)  # the interrupted attempts are retried
        assert configure.calls >= 4
        assert_accounts(pool, pg, app)
        assert pool.snapshot().idle == 2
        # both workers are still alive: two returns needing a worker each are served
        assert all(w.is_alive() for w in pool._workers)
    assert any("KeyboardInterrupt" in r.getMessage() for r in caplog_all.records)


async def test_base_exception_in_configure_async(pg):
    app = app_name()
    configure = ARaiseOnce(Interrupt, times=2)
    async with AsyncConnectionPool(
        pg.dsn(application_name=app), min_size=2, num_workers=2, configure=configure
    ) as pool:
        await pool.wait(timeout=30)
        assert configure.calls >= 4
        assert_accounts(pool, pg, app)
        assert not any(w.done() for w in pool._workers)


def test_base_exception_in_configure_null_pool_sync(pg):
    """A null pool configures in the caller's thread: the caller gets the exception."""
    app = app_name()
    with NullConnectionPool(
        pg.dsn(application_name=app), max_size=1, configure=RaiseOnce(Interrupt)
    ) as pool:
        with pytest.raises(Interrupt):
            pool.getconn(timeout=10)
        assert pool.snapshot().size == 0
        wait_until(lambda: pg.backends(app) == 0, timeout=15)  # the connection was closed
        with pool.connection(timeout=10) as conn:
            conn.execute("SELECT 1")
        assert_accounts(pool, pg, app)


async def test_base_exception_in_configure_null_pool_async(pg):
    app = app_name()
    async with AsyncNullConnectionPool(
        pg.dsn(application_name=app), max_size=1, configure=ARaiseOnce(Interrupt)
    ) as pool:
        with pytest.raises(Interrupt):
            await pool.getconn(timeout=10)
        assert pool.snapshot().size == 0
        await await_until(lambda: pg.backends(app) == 0, timeout=15)
        async with pool.connection(timeout=10) as conn:
            await conn.execute("SELECT 1")
        assert_accounts(pool, pg, app)


# --- reset ---


def test_keyboard_interrupt_in_reset_sync(pg, caplog_all):
    app = app_name()
    reset = RaiseOnce(KeyboardInterrupt)
    with ConnectionPool(
        pg.dsn(application_name=app), min_size=1, num_workers=1, reset=reset
    ) as pool:
        pool.wait(timeout=30)
        conn = pool.getconn()
        pool.putconn(conn)
        wait_until(lambda: pool.snapshot().used == 0, timeout=15)
        # The interrupted connection was retired, and the only worker still serves:
        # the next return (which needs it to run reset) comes back.
        with pool.connection(timeout=15) as conn:
            conn.execute("SELECT 1")
        wait_until(lambda: pool.snapshot().idle == 1, timeout=15)
        assert reset.calls == 2
        assert_accounts(pool, pg, app)
        assert pool.aggregates().lifetime["reset_failed"].count == 1
    assert any("KeyboardInterrupt" in r.getMessage() for r in caplog_all.records)


async def test_base_exception_in_reset_async(pg):
    app = app_name()
    reset = ARaiseOnce(Interrupt)
    async with AsyncConnectionPool(
        pg.dsn(application_name=app), min_size=1, num_workers=1, reset=reset
    ) as pool:
        await pool.wait(timeout=30)
        conn = await pool.getconn()
        await pool.putconn(conn)
        await await_until(lambda: pool.snapshot().used == 0, timeout=15)
        async with pool.connection(timeout=15) as conn:
            await conn.execute("SELECT 1")
        await await_until(lambda: pool.snapshot().idle == 1, timeout=15)
        assert reset.calls == 2
        assert_accounts(pool, pg, app)


def test_reset_on_closed_pool_reraises_after_retiring_sync(pg):
    """On a closed pool the return runs in the caller: it gets the exception, nothing leaks."""
    app = app_name()
    pool = ConnectionPool(
        pg.dsn(application_name=app), min_size=1, reset=RaiseOnce(Interrupt), open=False
    )
    pool.open(wait=True)
    conn = pool.getconn()
    pool.close()
    with pytest.raises(Interrupt):
        pool.putconn(conn)
    assert conn.closed
    s = pool.snapshot()
    assert (s.size, s.used) == (0, 0)
    wait_until(lambda: pg.backends(app) == 0, timeout=15)


class InterruptInLogging(BaseException):
    """A second interruption, raised while the first one is being logged."""


def test_an_interruption_inside_the_reset_handler_still_retires_sync(pg):
    """A signal handler can raise while the return's `except` block logs the first
    interruption. The `finally` must still retire the connection, not fail with an
    UnboundLocalError and leave it neither idle nor closed."""
    app = app_name()
    pool = ConnectionPool(
        pg.dsn(application_name=app), min_size=1, reset=RaiseOnce(Interrupt), open=False
    )
    pool.open(wait=True)
    conn = pool.getconn()
    pool.close()  # the return now runs in the caller, which sees what it raises

    def interrupt_the_warning(record: logging.LogRecord) -> bool:
        if "reset of a returned connection interrupted" in record.getMessage():
            raise InterruptInLogging
        return True

    logger = logging.getLogger("poolwatch.pool")
    logger.addFilter(interrupt_the_warning)
    try:
        with pytest.raises(InterruptInLogging) as raised:
            pool.putconn(conn)
    finally:
        logger.removeFilter(interrupt_the_warning)
    assert isinstance(raised.value.__context__, Interrupt)
    assert conn.closed
    s = pool.snapshot()
    assert (s.size, s.used) == (0, 0)
    wait_until(lambda: pg.backends(app) == 0, timeout=15)


# --- interrupted rollback on return ---


async def test_cancelled_putconn_lets_the_cancellation_out(pg):
    """asyncio.timeout around putconn fires while the rollback hangs; the connection is retired."""
    app = app_name()
    async with AsyncConnectionPool(pg.dsn(application_name=app), min_size=1) as pool:
        await pool.wait(timeout=30)
        conn = await pool.getconn()
        await conn.execute("SELECT 1")  # a transaction is open: putconn must roll back
        t0 = time.monotonic()
        with backend_stopped(conn.info.backend_pid):
            with pytest.raises(asyncio.TimeoutError):
                await within(0.1, pool.putconn(conn))
            elapsed = time.monotonic() - t0
        print(f"\ncancellation out of putconn after {elapsed:.3f} s")  # for the record (-s)
        # psycopg alone would hold the cancellation for its 5 s cancel wait.
        assert elapsed < 4.0, elapsed
        await await_until(lambda: pool.snapshot().idle == 1, timeout=20)  # replaced
        a = pool.aggregates()
        assert a.errors.get(("reset_failed", ""), 0) == 0, a.errors
        assert a.lifetime["reset_failed"].count == 1
        assert conn.closed
        assert_accounts(pool, pg, app)
        async with pool.connection(timeout=10) as c:
            await c.execute("SELECT 1")


def test_interrupted_rollback_on_return_sync(pg):
    """A BaseException raised (by a signal handler) while putconn rolls back."""
    app = app_name()

    def on_alarm(signum, frame):
        raise Interrupt()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with ConnectionPool(pg.dsn(application_name=app), min_size=1) as pool:
            pool.wait(timeout=30)
            conn = pool.getconn()
            conn.execute("SELECT 1")
            with backend_stopped(conn.info.backend_pid):
                signal.setitimer(signal.ITIMER_REAL, 0.2)
                with pytest.raises(Interrupt):
                    pool.putconn(conn)
            wait_until(lambda: pool.snapshot().idle == 1, timeout=20)
            assert conn.closed
            assert pool.snapshot().used == 0
            assert_accounts(pool, pg, app)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- pool.check() interrupted ---


def pool_backend_pids(pg, app: str) -> list[int]:
    rows = pg.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
    return [int(r[0]) for r in rows]


@contextmanager
def backends_stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def test_cancelled_pool_check_puts_every_connection_back(pg):
    app = app_name()
    async with AsyncConnectionPool(pg.dsn(application_name=app), min_size=2) as pool:
        await pool.wait(timeout=30)
        pids = pool_backend_pids(pg, app)
        assert len(pids) == 2
        with backends_stopped(pids):  # the first check hangs, whichever it is
            task = asyncio.create_task(pool.check())
            await asyncio.sleep(0.3)
            task.cancel()
            # psycopg waits up to 5 s for the server to acknowledge the cancellation
            done, _ = await asyncio.wait([task], timeout=15)
        assert done, "check() did not end after its cancellation"
        assert task.cancelled()  # the cancellation was not swallowed
        await await_until(lambda: pool.snapshot().idle == 2, timeout=20)
        s = pool.snapshot()
        assert s.used == 0
        assert pool.aggregates().lifetime["broken"].count == 1  # the one mid-check
        assert_accounts(pool, pg, app)


def test_interrupted_pool_check_puts_every_connection_back_sync(pg):
    app = app_name()

    def on_alarm(signum, frame):
        raise Interrupt()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with ConnectionPool(pg.dsn(application_name=app), min_size=2) as pool:
            pool.wait(timeout=30)
            pids = pool_backend_pids(pg, app)
            with backends_stopped(pids):
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                with pytest.raises(Interrupt):
                    pool.check()
            wait_until(lambda: pool.snapshot().idle == 2, timeout=20)
            assert pool.snapshot().used == 0
            assert pool.aggregates().lifetime["broken"].count == 1
            assert_accounts(pool, pg, app)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_interrupted_wait_for_a_connection_is_counted_sync(dsn):
    """A KeyboardInterrupt while a request waits: no waiter left behind, outcome recorded."""

    def on_alarm(signum, frame):
        raise Interrupt()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with ConnectionPool(dsn, min_size=1) as pool:
            pool.wait(timeout=30)
            held = pool.getconn()
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupt):
                pool.getconn(timeout=30)
            s = pool.snapshot()
            assert (s.waiting, s.used) == (0, 1)
            assert pool.aggregates().acquire["cancelled"].count == 1
            pool.putconn(held)
            assert pool.snapshot().idle == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- reconnect_failed ---


def test_base_exception_in_reconnect_failed_keeps_the_worker(pg):
    """The only worker survives an interrupting reconnect_failed and serves the next growth."""
    app = app_name()
    good = pg.dsn(application_name=app)
    bad = pg.dsn(application_name=app, port=1)  # nothing listens on port 1
    called = threading.Event()

    def conninfo():
        return good if called.is_set() else bad

    def reconnect_failed(pool):
        called.set()
        raise KeyboardInterrupt

    with ConnectionPool(
        conninfo,
        min_size=1,
        num_workers=1,
        reconnect_timeout=0,
        reconnect_failed=reconnect_failed,
    ) as pool:
        assert called.wait(30)
        wait_until(lambda: pool.snapshot().size == 0, timeout=15)
        with pool.connection(timeout=15) as conn:  # needs the worker to open one
            conn.execute("SELECT 1")
        assert_accounts(pool, pg, app)


async def test_base_exception_in_reconnect_failed_keeps_the_worker_async(pg):
    app = app_name()
    good = pg.dsn(application_name=app)
    bad = pg.dsn(application_name=app, port=1)
    called = asyncio.Event()

    async def conninfo():
        return good if called.is_set() else bad

    async def reconnect_failed(pool):
        called.set()
        raise Interrupt

    async with AsyncConnectionPool(
        conninfo,
        min_size=1,
        num_workers=1,
        reconnect_timeout=0,
        reconnect_failed=reconnect_failed,
    ) as pool:
        await asyncio.wait_for(called.wait(), 30)
        await await_until(lambda: pool.snapshot().size == 0, timeout=15)
        async with pool.connection(timeout=15) as conn:
            await conn.execute("SELECT 1")
        assert_accounts(pool, pg, app)


# --- the event loop ends under a busy worker ---


def test_loop_ending_while_a_worker_runs_a_task_does_not_hang(pg):
    """asyncio.run() cancels the workers on exit: one busy in configure must end too."""
    app = app_name()
    entered = threading.Event()

    async def configure(conn):
        entered.set()
        await asyncio.sleep(5)

    async def main():
        pool = AsyncConnectionPool(
            pg.dsn(application_name=app), min_size=1, configure=configure, open=False
        )
        await pool.open()
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        return pool  # left open on purpose: the loop's end must stop its workers

    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["pool"] = asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "asyncio.run() never returned: a worker outlived its loop"
    assert entered.is_set()
    wait_until(lambda: pg.backends(app) == 0, timeout=15)  # the half-configured one closed
