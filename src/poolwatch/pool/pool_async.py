"""AsyncConnectionPool: the pool's I/O, written once; `pool.py` is generated from it."""

from __future__ import annotations

import logging
import warnings
from bisect import bisect_left
from contextlib import suppress
from time import monotonic
from types import TracebackType
from typing import Any, Generic, NoReturn, cast

from psycopg import AsyncConnection
from psycopg import errors as e

from .._acompat import (
    ACLIENT_EXCEPTIONS,
    AEvent,
    AQueue,
    AWaiter,
    AWorker,
    aawait_detached,
    acheck_running_loop,
    acurrent_loop,
    agather,
    asleep,
    aspawn,
)
from ..abc import ACT, AsyncConnectFailedCB, AsyncConnectionCB, AsyncConninfoParam, AsyncKwargsParam
from ..errors import PoolClosed, PoolConfigError, PoolTimeout, TooManyRequests
from ..observe import ACQUIRE_BUCKETS, PoolObserver
from . import _compiled
from ._lograte import flush_pool_warnings
from ._redact import redact_message
from .base import HOLDS_FOLD_AT, Backoff, borrower_stack, reject_unknown_arguments
from .sched_async import AsyncScheduler
from .tasks_async import (
    AddConnection,
    LeakScan,
    MaintenanceTask,
    ReturnConnection,
    ShrinkPool,
    StopWorker,
)
from .upkeep_async import IDLE, AsyncPoolUpkeep, _worker

_new_object = object.__new__
# What an entered `connection()` context holds while it waits for its connection.
_ENTERING: Any = object()

# Almost every uncontended checkout takes less than the first bucket: skip the bisect.
_FIRST_ACQUIRE_BOUND = ACQUIRE_BUCKETS[0]

logger = logging.getLogger("poolwatch.pool")


class AsyncConnectionPool(AsyncPoolUpkeep[ACT]):
    """A pool of psycopg `AsyncConnection`, compatible with psycopg_pool's.

    Parameters and defaults are psycopg_pool 3.3's; poolwatch adds *leak_timeout*
    (seconds a checkout may last before it is reported as a suspected leak, off by
    default), *observer* (a `PoolObserver` receiving every event) and *use_lifo*.

    Idle connections are handed out first in, first out, as psycopg_pool does: every
    connection is used in turn, so none sits idle long enough for a firewall or NAT
    to drop it. With ``use_lifo=True`` the most recently returned one is reused first:
    its caches are warm, and connections beyond what the load needs stay idle long
    enough for ``max_idle`` to close them.

    Example::

        async with AsyncConnectionPool("dbname=app", min_size=2, max_size=10) as pool:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

    Raises:
        PoolConfigError: (a ValueError) at construction, for an invalid argument;
            the message names it.
    """

    _ASYNC = True

    def __init__(
        self,
        conninfo: AsyncConninfoParam = "",
        *,
        connection_class: type[ACT] = cast(type[ACT], AsyncConnection),  # noqa: B008
        kwargs: AsyncKwargsParam | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: AsyncConnectionCB[ACT] | None = None,
        check: AsyncConnectionCB[ACT] | None = None,
        reset: AsyncConnectionCB[ACT] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: AsyncConnectFailedCB | None = None,
        num_workers: int = 3,
        leak_timeout: float | None = None,
        observer: PoolObserver | None = None,
        use_lifo: bool = False,
        **unknown: NoReturn,
    ) -> None:
        reject_unknown_arguments(type(self).__name__, unknown, _ARGUMENTS)
        _check_conninfo(conninfo)
        for cb_name, cb in (
            ("configure", configure),
            ("check", check),
            ("reset", reset),
            ("reconnect_failed", reconnect_failed),
        ):
            if cb is not None and not callable(cb):
                raise TypeError(f"{cb_name} must be callable, got {type(cb).__name__}")
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self._configure = configure
        self._check = check
        self._reset = reset
        self._reconnect_failed = reconnect_failed

        # Created on open, so that async objects attach to the running loop.
        self._tasks: AQueue[MaintenanceTask]
        self._sched: AsyncScheduler
        self._sched_runner: AWorker | None = None
        self._workers: list[AWorker] = []
        # The events of the wait() calls in progress, each its own (an event belongs to
        # its caller's loop), all set once the pool is full; _pool_full_event is the
        # latest of them, None when nobody waits (returns then need not look).
        self._full_waits: list[AEvent] = []
        self._pool_full_event: AEvent | None = None
        self._loop: Any = None  # async: the event loop that opened the pool, its workers' loop

        super().__init__(
            min_size=min_size,
            max_size=max_size,
            name=name,
            close_returns=close_returns,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            num_workers=num_workers,
            leak_timeout=leak_timeout,
            observer=observer,
            use_lifo=use_lifo,
        )
        self._desk = _compiled.desk_for(_DESK, self)
        if self._desk is not None:
            self._refresh_fast_paths()  # the desk keeps its own copy of _fast_borrow
        if self._ASYNC and open:
            self._warn_open_in_constructor()
        if open is None:
            open = self._open_implicit = True
        if open:
            self._open()

    def _warn_open_in_constructor(self) -> None:
        cls = type(self).__name__
        warnings.warn(
            f"opening the async pool {cls} in the constructor is deprecated and will stop"
            f" working in a future release: use `await pool.open()` or `async with {cls}(...)`",
            RuntimeWarning,
            stacklevel=4,
        )

    def _warn_implicit_open(self) -> None:
        with self._lock:
            self._open_implicit = False
            self._refresh_fast_paths()
        if self._ASYNC:
            self._warn_open_in_constructor()
            return
        cls = type(self).__name__
        warnings.warn(
            f"the default for the {cls} 'open' parameter will become 'False' in a future"
            f" release: pass open=True or open=False explicitly, or use `with {cls}(...)`",
            DeprecationWarning,
            stacklevel=4,
        )

    # --- lifecycle ---

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool: start the workers and begin filling it to *min_size*.

        With *wait*, block until *min_size* connections are ready (see `wait()`).
        Opening an open pool does nothing; a closed pool cannot be opened again.

        Raises:
            PoolClosed: the pool was closed already.
            PoolTimeout: with *wait*, the pool did not fill within *timeout* seconds.
        """
        acheck_running_loop(f"{type(self).__name__}.open()")
        self._open()
        if wait:
            await self.wait(timeout=timeout)

    def _open(self) -> None:
        with self._lock:
            if not self._closed:
                return
            if self._opened:
                raise PoolClosed("pool has already been opened/closed and cannot be reused")
            acheck_running_loop(f"opening {type(self).__name__}")
            self._tasks = AQueue()
            self._sched = AsyncScheduler()
            self._loop = acurrent_loop()
            self._closed = False
            self._opened = True
        self._register_open()
        self._sched_runner = aspawn(self._sched.run, (), f"{self.name}-scheduler")
        # async only: begin
        self._sched_runner.add_done_callback(self._note_runner_end)
        # async only: end
        for i in range(self.num_workers):
            worker = aspawn(_worker, (self._tasks,), f"{self.name}-worker-{i}")
            # async only: begin
            worker.add_done_callback(self._note_runner_end)
            # async only: end
            self._workers.append(worker)
        self._start_initial_tasks()

    # async only: begin
    def _note_runner_end(self, runner: AWorker) -> None:
        """A worker's or the scheduler's task ended; cancelled, its event loop is ending.

        asyncio.run() cancels every task left before it closes its loop: the pool's
        workers end with it. From then on no checkout takes the fast path, and the
        general one refuses with PoolClosed once the loop is closed. (Checking the loop
        on every checkout instead cost a fifth of an uncontended one.)
        """
        if runner.cancelled():
            with self._lock:
                self._runners_ended = True
                self._closed = self._closed_flag  # recompute the fast-path switch

    # async only: end
    def _start_initial_tasks(self) -> None:
        for _ in range(self._nconns):
            self.run_task(AddConnection(self))
        self._sched.enter(self.max_idle, ShrinkPool(self).tick)
        if self.leak_timeout is not None:
            self._sched.enter(self._leak_scan_interval(), LeakScan(self).tick)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until the pool holds *min_size* connections (several callers may wait at once).

        Raises:
            PoolTimeout: not ready within *timeout* seconds; the pool is then closed.
        """
        self._check_usable()
        with self._lock:
            if len(self._idle) >= self._min_size:
                return
            self._pool_full_event = event = AEvent()
            self._full_waits.append(event)
            self._refresh_fast_paths()  # returns must reach _on_idle_added_locked
        logger.info("waiting for pool %r initialization", self.name)
        try:
            ready = await event.wait_timeout(timeout)
        finally:
            with self._lock:
                self._full_waits.remove(event)
                # Another wait() may still be in progress: the slot and the switch
                # follow the ones left, not this one's end.
                self._pool_full_event = self._full_waits[-1] if self._full_waits else None
                self._refresh_fast_paths()
        if not ready:
            cause = self._last_connect_error
            await self.close()
            err = PoolTimeout(
                f"pool {self.name!r} initialization incomplete after {timeout} sec",
                snapshot=self.snapshot(),
            )
            raise err from cause
        logger.info("pool %r is ready to use", self.name)

    def _on_idle_added_locked(self) -> None:
        if self._pool_full_event and len(self._idle) >= self._min_size:
            for event in self._full_waits:
                event.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: fail waiting and future requests with `PoolClosed`.

        Idle connections are closed now; checked-out ones when they come back.
        Waits up to *timeout* seconds for the background workers to stop.

        Raises:
            RuntimeError: (async pool only) called on another event loop than the
                one that opened the pool, where its workers run; the pool stays open.
        """
        if self._closed:
            return
        loop = self._loop
        if loop is not None and acurrent_loop() is not loop and not loop.is_closed():
            raise RuntimeError(
                f"pool {self.name!r} must be closed in the event loop that opened it,"
                " where its workers run; other loops may only take and return connections"
            )
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            idle = list(self._idle)
            self._idle.clear()
            now = monotonic()
            for conn in idle:
                self._count_closed_locked(conn, "close", now)
                self._nconns -= 1
            error = PoolClosed(f"the pool {self.name!r} is closed")
            for waiter in waiting:
                waiter.fail(error)
        logger.debug("pool %r closed", self.name)
        self._sched.enter(0, None)
        workers, self._workers = self._workers, []
        for _ in workers:
            self.run_task(StopWorker(self))
        if self._sched_runner:
            workers.append(self._sched_runner)
            self._sched_runner = None
        if loop is not None and loop.is_closed():
            workers = []  # they ended with their loop
        for name in await agather(workers, timeout):
            logger.warning("couldn't stop worker %r of pool %r in %s sec", name, self.name, timeout)
        # A return queued from another thread or event loop can land behind the stop
        # signals, where no worker takes it: run what is left, so that every returned
        # connection is accounted for and closed on the server.
        for task in self._tasks.take_all():
            if isinstance(task, StopWorker):
                continue
            try:
                await task.run()
            except ACLIENT_EXCEPTIONS as ex:
                logger.warning("task run %s failed: %s: %s", task, type(ex).__name__, ex)
        for conn in idle:
            await self._close_connection(conn)
        # The summary of warnings held back belongs before the pool's end, not after it.
        flush_pool_warnings(self)
        self._flush_notifications()
        if self._observer:
            self._observer.close()

    def __del__(self) -> None:
        # A sync pool dropped while open would leave its threads blocked for good: tell
        # them to stop, without waiting (this may run in any thread, even a worker).
        # An async pool's workers are tasks of its event loop, which ends them.
        if self._ASYNC or not getattr(self, "_workers", None):
            return
        workers, self._workers = self._workers, []
        for _ in workers:
            self._tasks.put_nowait(StopWorker(self))
        self._sched.enter(0, None)

    async def __aenter__(self) -> AsyncConnectionPool[ACT]:
        with self._lock:
            # No implicit-open warning is owed any more: the switch of the inlined
            # paths, which that warning kept off, must learn it too.
            self._open_implicit = False
            self._refresh_fast_paths()
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._open_implicit:
            self._warn_implicit_open()

    # --- handing connections out ---

    def connection(self, timeout: float | None = None) -> _AsyncBorrow[ACT]:
        """Context manager lending a connection, returned on exit.

        On exit the transaction is committed, or rolled back after an exception, as
        psycopg's own connection context does; a broken connection is replaced.

        Raises:
            PoolTimeout, TooManyRequests, PoolClosed: as `getconn()`.
        """
        desk = self._desk
        if desk is not None:  # the compiled block (sync pools only: see _compiled)
            return desk.lend(timeout)  # type: ignore[no-any-return]
        # Built without __init__: a class call runs __init__ in a frame of its own,
        # which costs a checkout more than the three stores below.
        borrow: _AsyncBorrow[ACT] = _new_object(_AsyncBorrow)
        borrow._pool = self
        borrow._timeout = timeout
        borrow._conn = None
        return borrow

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Take a connection; the caller must give it back with `putconn()`.

        Waits up to *timeout* seconds (default: the pool's ``timeout``); 0 means
        "only if one is free now". Waiting requests are served first come, first served.

        Raises:
            PoolTimeout: no connection within the timeout; says the pool's state and
                chains the last connection error, if connecting failed.
            TooManyRequests: ``max_waiting`` requests are already waiting.
            PoolClosed: the pool is closed, not open yet, inherited across fork(), or
                (async pool) the event loop that opened it, where its workers ran, ended.
        """
        if self._open_implicit:
            self._check_usable()
        # The fast path, inlined (it is what almost every request takes): the same
        # bookkeeping as _take_idle_locked, _checkout_locked and _record_acquire_locked,
        # without their calls; acquire()/release() rather than `with`, which creates a
        # bound method for every call. A request that gets the lock at once has waited
        # for nothing: its clock starts inside the lock, and its wait counts as zero.
        lock = self._lock
        if lock.acquire(False):
            t0 = None
        else:
            t0 = monotonic()
            lock.acquire()
        try:
            now = monotonic()
            idle = self._idle
            if idle and self._fast_checkout and idle[0]._expire_at > now:
                conn = idle.popleft()
                if not idle:
                    self._idle_ran_out = True
                self._out[conn] = now
                if self._site_of is not None:  # call-site attribution, a few hundred ns
                    self._sites[conn] = self._site_of()
                if t0 is None:
                    self._instant += 1  # a request, its wait zero (see BasePool._instant)
                else:
                    self._agg.requests += 1
                    wait = now - t0
                    hist = self._acquire_ok
                    hist.counts[
                        0 if wait <= _FIRST_ACQUIRE_BOUND else bisect_left(hist.bounds, wait)
                    ] += 1
                    hist.sum += wait
                conn._pool = self
                return conn  # type: ignore[no-any-return]
            # Not the fast path: go on in the same critical section (taking the lock
            # again would cost a busy pool, where every request waits, a second round).
            # async only: begin (a thread pool has no event loop to outlive)
            loop = self._loop
            if loop is not None and loop.is_closed():
                # Its workers ended with that loop: a connection lent now could not come
                # back (a return with a reset, a replacement, growth all run there). The
                # fast path is off by then: see _note_runner_end.
                raise PoolClosed(
                    f"the event loop that opened pool {self.name!r} has ended, and its"
                    " workers with it: open the pool in the event loop that uses it (for"
                    " example inside the coroutine given to asyncio.run()), or close it"
                )
            # async only: end
            if t0 is None:
                t0 = now
            waiter: AWaiter | None = None
            err: Exception | None = None
            self._agg.requests += 1
            conn = None if self._closed else self._take_idle_locked(now)
            if conn is not None:
                self._checkout_locked(conn, now)
                if self._check is None:
                    self._agg.acquire["ok"].observe(now - t0)
                    conn._pool = self
                    if self.leak_timeout is not None:
                        self._leak_stacks[conn] = borrower_stack()
                    if self._site_of is not None:
                        self._sites[conn] = self._site_of()
                    if self._observer is None:
                        return cast(ACT, conn)
                    self._notify_later.append(("on_acquire", (now - t0, "ok", False)))
            else:
                try:
                    waiter = self._queue_or_reserve_locked(t0)
                except (PoolClosed, TooManyRequests) as ex:
                    outcome = "closed" if isinstance(ex, PoolClosed) else "too_many"
                    self._record_acquire_locked(outcome, now - t0, queued=False)
                    err = ex
        finally:
            lock.release()
        if err is not None:
            self._notify_acquire_failure(now - t0, err, queued=False)
            raise err
        if conn is not None and self._check is None:
            self._flush_notifications()
            return cast(ACT, conn)
        if timeout is None:
            timeout = self.timeout
        return await self._getconn_slow(t0, timeout, waiter, conn)

    def _queue_or_reserve_locked(self, t0: float) -> AWaiter | None:
        """No idle connection: queue a waiter, or (null pools) reserve a new connection.

        Returns the waiter, or None when a connection was reserved for the caller.
        """
        if self._closed:
            raise self._closed_error()
        if self._reserve_new_locked():
            return None
        waiter = AWaiter(t0)
        self._enqueue_locked(waiter)
        if self._grow_if_useful_locked():
            self.run_task(AddConnection(self, growing=True))
        return waiter

    async def _getconn_slow(
        self, t0: float, timeout: float, waiter: AWaiter | None, conn: Any
    ) -> ACT:
        """Wait for, or open, a connection and run the ``check`` callback, retrying."""
        deadline = t0 + timeout
        queued = waiter is not None
        backoff: Backoff | None = None
        try:
            while True:
                if conn is None:
                    if waiter is not None:
                        conn = await self._wait_for_connection(waiter, deadline, timeout)
                        waiter = None
                    else:
                        conn = await self._connect_for_request(deadline, timeout)
                if self._check is None or await self._passes_check(conn):
                    break
                conn = None
                now = monotonic()
                if backoff is None:
                    backoff = Backoff(timeout=max(0.0, deadline - now))
                else:
                    backoff.update_delay(now)
                if backoff.time_to_give_up(now) or now >= deadline:
                    raise self._timeout_error(timeout)
                await asleep(min(backoff.delay, deadline - now))
                with self._lock:
                    now = monotonic()
                    conn = None if self._closed else self._take_idle_locked(now)
                    if conn is not None:
                        self._checkout_locked(conn, now)
                    else:
                        waiter = self._queue_or_reserve_locked(t0)
                        queued = queued or waiter is not None
        except BaseException as ex:  # whatever ends the request (a KeyboardInterrupt too)
            wait = monotonic() - t0
            with self._lock:
                self._record_acquire_locked(_failure_outcome(ex), wait, queued=queued)
            self._notify_acquire_failure(wait, ex, queued=queued)
            raise
        conn._pool = self
        wait = monotonic() - t0
        stack = borrower_stack() if self.leak_timeout is not None else None
        site_of = self._site_of
        site = site_of() if site_of is not None else None
        with self._lock:
            if stack is not None:
                self._leak_stacks[conn] = stack
            if site is not None and conn in self._out:
                self._sites[conn] = site
            # _record_acquire_locked("ok", ...), inlined: most requests on a busy pool
            # end here, and two calls cost more than the bookkeeping itself.
            hist = self._acquire_ok
            hist.counts[bisect_left(hist.bounds, wait)] += 1
            hist.sum += wait
            if queued:
                self._agg.queued_wait_seconds += wait
        if self._observer:
            self._observer.on_acquire(wait, "ok", queued=queued)
            self._flush_notifications()
        return cast(ACT, conn)

    async def _wait_for_connection(self, waiter: AWaiter, deadline: float, timeout: float) -> Any:
        try:
            await waiter.wait(deadline - monotonic())
        except BaseException:
            # Cancelled or interrupted: if a connection arrived meanwhile, put it back.
            with self._lock:
                gave_up = waiter.abandon()
                if gave_up:
                    self._remove_waiter_locked(waiter)
            if not gave_up and waiter.conn is not None:
                await self._giveback_unused(waiter.conn)
            raise
        conn = waiter.conn
        if conn is not None:
            # Handed a connection: assign() settled the waiter, under the lock, before
            # waking it, so there is nothing left to decide.
            return conn
        with self._lock:
            timed_out = waiter.abandon()
            if timed_out:
                self._remove_waiter_locked(waiter)
        if timed_out:
            raise self._timeout_error(timeout)
        if waiter.error is not None:
            raise waiter.error
        return waiter.conn

    def _remove_waiter_locked(self, waiter: AWaiter) -> None:
        with suppress(ValueError):
            self._waiting.remove(waiter)

    async def _connect_for_request(self, deadline: float, timeout: float) -> Any:
        """Open a connection for one request (null pools), in the room reserved for it."""
        try:
            conn = await self._connect(timeout=max(0.001, deadline - monotonic()))
        except BaseException as ex:
            with self._lock:
                self._nconns -= 1
            if isinstance(ex, e.ConnectionTimeout):
                raise self._timeout_error(timeout) from ex
            raise
        with self._lock:
            self._checkout_locked(conn, monotonic())
        return conn

    async def _giveback_unused(self, conn: Any) -> None:
        """Put back a connection assigned to a request that gave up before taking it."""
        with self._lock:
            now = monotonic()
            self._uncheckout_locked(conn, now)
            close_now = self._put_back_locked(conn, now)
        if close_now:
            await self._close_connection(conn)
        self._flush_notifications()

    async def _passes_check(self, conn: Any) -> bool:
        """Run the ``check`` callback; on failure retire the connection and say False.

        The connection stays checked out, from its original checkout time, while the
        check runs: the check's time is time the connection was busy for this request.
        A check interrupted by the caller (task cancelled, KeyboardInterrupt, a
        gevent-style timeout) is not a failed check: the connection goes back to the
        pool, or is retired if the interruption left it unusable, then the
        interruption propagates.
        """
        assert self._check is not None
        try:
            await self._check(conn)
        except Exception as ex:
            logger.info("connection failed check: %s", ex)
            await self._giveback_after_check(conn, "check_failed")
            return False
        except BaseException:
            await self._giveback_after_check(conn, _interrupted_close_reason(conn))
            raise
        return True

    async def _giveback_after_check(self, conn: Any, reason: str | None) -> None:
        """Take back a connection whose check failed or was interrupted (see `_passes_check`)."""
        with self._lock:
            now = monotonic()
            self._uncheckout_locked(conn, now)
            if reason == "check_failed":
                self._agg.connections_lost += 1
                self._count_error_locked("check_failed")
            close_now = self._put_back_locked(conn, now, reason)
        if close_now:
            await self._close_connection(conn)
        self._flush_notifications()

    def _notify_acquire_failure(self, wait: float, error: BaseException, *, queued: bool) -> None:
        if self._observer:
            self._observer.on_acquire(wait, _failure_outcome(error), queued=queued)
            self._flush_notifications()

    # --- taking connections back ---

    async def putconn(self, conn: ACT) -> None:
        """Give back a connection taken with `getconn()`.

        An open transaction is rolled back (with a warning); a broken connection is
        replaced; the ``reset`` callback runs before the connection is reused.

        Raises:
            ValueError: *conn* does not come from this pool, or was already returned.
        """
        if self._reset is None and conn.pgconn.transaction_status == IDLE:
            lock = self._lock
            lock.acquire()
            try:
                now = monotonic()
                t_out = self._out.pop(conn, None)
                if t_out is None:
                    raise self._bad_return_error(conn)
                if (
                    self._fast_checkout  # also: open, no leak tracking, no observer
                    and conn._expire_at > now  # drain() expires the checked-out ones
                    and self._nconns <= self._max_size
                ):
                    # The fast path, inlined: _checked_in_locked and _put_back_locked
                    # (with _deliver_locked) for a healthy connection.
                    # Its hold time waits in _holds for a reader (see BasePool._holds).
                    holds = self._holds
                    holds.append(now - t_out)
                    if len(holds) >= HOLDS_FOLD_AT:
                        self._fold_holds_locked()
                    if self._sites:
                        self._sites.pop(conn, None)
                    waiting = self._waiting
                    while waiting:
                        # Straight to the first request still waiting; one that gave up
                        # first refuses it, and the next one is asked.
                        if waiting.popleft().assign(conn):
                            self._out[conn] = now
                            return
                    conn._pool = None
                    self._idle_put(conn)
                    if self._pool_full_event is not None:
                        self._on_idle_added_locked()
                    return
                use = self._checked_in_locked(conn, t_out, now, still_used=False)
                close_now = self._put_back_locked(conn, now)
            finally:
                lock.release()
            if self._observer:
                self._observer.on_release(use)
                self._flush_notifications()
            if close_now:
                await self._close_connection(conn)
            return
        with self._lock:
            now = monotonic()
            close_now = self._closes_returns_locked()
            use = self._checkin_locked(conn, now, still_used=not close_now)
            if close_now:
                self._drop_returned_locked(conn, now)
            # Decided and queued under the lock: close() sets _closed under it, then
            # queues the workers' stop signals, so a return queued here runs first.
            queued = not close_now and self._reset is not None and not self._closed
            if queued:
                self.run_task(ReturnConnection(self, conn))
        if self._observer:
            self._observer.on_release(use)
        if close_now:
            await self._close_connection(conn)
            self._flush_notifications()
            return
        if not queued:
            # Detached: if the caller is cancelled mid-rollback, its cancellation goes
            # on at once while the interrupted return retires the connection.
            await aawait_detached(self._return_connection, conn)
        self._flush_notifications()


class _AsyncBorrow(Generic[ACT]):
    """What `AsyncConnectionPool.connection()` returns: a light context manager (`async with `)."""

    __slots__ = ("_checkout", "_conn", "_pool", "_timeout")
    # _conn is set by __aenter__ and cleared by __aexit__: an entry while it is set would
    # overwrite the lending the open block still owns (its connection then never comes
    # back), and a second exit has nothing to do. (A None test, not a missing slot:
    # raising and catching AttributeError on every entry would cost a microsecond.)
    _checkout: float | None
    _conn: ACT | None
    _pool: AsyncConnectionPool[ACT]
    _timeout: float | None

    async def __aenter__(self) -> ACT:
        pool = self._pool
        # getconn()'s fast path again, inlined for the case where the lock is free at once
        # and an idle connection is ready: a call to getconn() would cost the block a
        # frame more than the whole bookkeeping here. Anything else goes to getconn().
        # Whether the context is open already is asked under the lock, and the answer
        # stored before it is released: two threads entering one context at once
        # would otherwise both borrow, and the lending stored first would be lost.
        lock = pool._lock
        if lock.acquire(False):
            if self._conn is not None:
                lock.release()
                raise RuntimeError("this connection() context is already open: create another")
            now = monotonic()
            idle = pool._idle
            if idle and pool._fast_borrow and idle[0]._expire_at > now:
                conn = idle.popleft()
                if not idle:
                    pool._idle_ran_out = True
                pool._out[conn] = self._checkout = now
                pool._instant += 1
                conn._pool = pool
                self._conn = conn
                lock.release()
                return conn  # type: ignore[no-any-return]
            # Claimed, under the lock, before the wait for a connection: another task
            # (or thread) entering this same context meanwhile is refused, instead of
            # both getting a connection and the first exit ending the other's lending.
            self._conn = _ENTERING
            lock.release()
        else:
            with lock:  # the same claim, when the lock was busy
                if self._conn is not None:
                    raise RuntimeError("this connection() context is already open: create another")
                self._conn = _ENTERING
        try:
            conn = await self._pool.getconn(self._timeout)
        except BaseException:
            self._conn = None  # no connection: the context can be entered again
            raise
        self._conn = conn
        # The token of this lending (see BasePool._checkout_locked); None if another
        # thread has already given the connection back.
        self._checkout = self._pool._out.get(conn)
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if conn is None:  # exited already
            return
        # Read before the context is marked closed: from then on another thread may
        # enter it again and store its own lending's token here.
        checkout = self._checkout
        self._conn = None
        # One read of one dict item, atomic on every build: the connection's entry in
        # _out is this lending's token until the lending ends, and a token, once
        # replaced, never comes back (the block keeps it referenced). None: the
        # connection was given back before the enter read its token.
        pool = self._pool
        if checkout is None or pool._out.get(conn) is not checkout:
            # Given back during the block (conn.close() with close_returns=True), and
            # maybe lent to someone else already: a commit or rollback here would end
            # their transaction, a return would take their connection. Nothing to do.
            logger.debug("connection given back before the end of its block: %s", conn)
            return
        if exc_type is None and conn.pgconn.transaction_status == IDLE:
            # putconn()'s fast path again, inlined: with no transaction open and no
            # error, psycopg's connection exit would do nothing, and a call to putconn()
            # would cost the block a frame more than the bookkeeping here.
            lock = pool._lock
            lock.acquire()
            try:
                if pool._out.get(conn) is not checkout:
                    # Given back meanwhile by another thread than its owner (a misuse):
                    # its next lending, if any, is not this block's to end.
                    logger.debug("connection given back during the end of its block: %s", conn)
                    return
                now = monotonic()
                if pool._fast_borrow and conn._expire_at > now and pool._nconns <= pool._max_size:
                    # Still this block's lending (the token matched, and only its owner
                    # ends a lending), so the connection is in _out since _checkout.
                    del pool._out[conn]
                    holds = pool._holds  # see BasePool._holds
                    holds.append(now - checkout)
                    if len(holds) >= HOLDS_FOLD_AT:
                        pool._fold_holds_locked()
                    waiting = pool._waiting
                    while waiting:
                        if waiting.popleft().assign(conn):
                            pool._out[conn] = now
                            return
                    conn._pool = None
                    pool._idle_put(conn)
                    return
            finally:
                lock.release()
            await pool.putconn(conn)
            return
        try:
            # psycopg's connection exit commits or rolls back; with no transaction
            # open and no error, it would do nothing, so skip the call.
            if exc_type is not None or conn.pgconn.transaction_status != IDLE:
                await conn.__aexit__(exc_type, exc_val, exc_tb)
        finally:
            await pool.putconn(conn)


# The compiled twin of _AsyncBorrow's fast case, where it is built (see _compiled); it
# calls _AsyncBorrow's methods for everything else.
_DESK = _compiled.load(_AsyncBorrow)


def _interrupted_close_reason(conn: Any) -> str | None:
    """Why a connection whose check was interrupted cannot be reused, or None if it can.

    psycopg cancels a query interrupted by a task cancellation or KeyboardInterrupt, so
    the connection is usually idle again; one left mid-query or closed is unusable.
    """
    if conn.closed or conn.pgconn.transaction_status != IDLE:
        return "broken"
    return None


def _failure_outcome(error: BaseException) -> str:
    if isinstance(error, PoolTimeout):
        return "timeout"
    if isinstance(error, TooManyRequests):
        return "too_many"
    if isinstance(error, PoolClosed):
        return "closed"
    if not isinstance(error, Exception):
        return "cancelled"
    return "error"


def _check_conninfo(conninfo: object) -> None:
    if callable(conninfo):
        return
    if not isinstance(conninfo, str):
        raise TypeError(f"conninfo must be a string or a callable, got {type(conninfo).__name__}")
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(conninfo)
    except Exception as ex:
        problem = redact_message(str(ex), conninfo)
    else:
        return
    # Raised outside the handler: libpq's own message, which may quote the password,
    # must not ride along as __context__.
    raise PoolConfigError(
        f"conninfo is not a valid connection string: {problem} (in a URI, percent-encode"
        " '%', '@', '/', ':' and spaces in the password; in key=value form, quote values"
        " containing spaces or quotes)"
    )


_ARGUMENTS = [
    "conninfo",
    "connection_class",
    "kwargs",
    "min_size",
    "max_size",
    "open",
    "configure",
    "check",
    "reset",
    "name",
    "close_returns",
    "timeout",
    "max_waiting",
    "max_lifetime",
    "max_idle",
    "reconnect_timeout",
    "reconnect_failed",
    "num_workers",
    "leak_timeout",
    "observer",
    "use_lifo",
]
