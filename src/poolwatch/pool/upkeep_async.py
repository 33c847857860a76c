"""Connection upkeep for the async pool: open, reset, check, close, resize, drain, shrink.

`AsyncConnectionPool` adds the request path (getconn/putconn) on top of this class;
`upkeep.py` is generated from this file.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from time import monotonic
from typing import Any, Generic

from psycopg import errors as e
from psycopg.pq import TransactionStatus

from .._acompat import ACLIENT_EXCEPTIONS, AQueue, acancelling, aensure
from ..abc import ACT, AsyncConnectFailedCB, AsyncConnectionCB, AsyncConninfoParam, AsyncKwargsParam
from ._lograte import pool_warning
from ._redact import without_secrets
from .base import SERVER_BUDGET_SQL, Backoff, BasePool
from .sched_async import AsyncScheduler
from .tasks_async import AddConnection, CloseConnection, MaintenanceTask, StopWorker

logger = logging.getLogger("poolwatch.pool")

# A plain int: libpq's transaction status comes back as an int (from psycopg's C
# implementation), and int == int is a specialised comparison, int == IntEnum is not.
IDLE = int(TransactionStatus.IDLE)
INTRANS = TransactionStatus.INTRANS
INERROR = TransactionStatus.INERROR
UNKNOWN = TransactionStatus.UNKNOWN


class AsyncPoolUpkeep(Generic[ACT], BasePool):
    """Everything the pool does to its connections, as opposed to for its callers."""

    conninfo: AsyncConninfoParam
    kwargs: AsyncKwargsParam | None
    connection_class: type[ACT]
    _configure: AsyncConnectionCB[ACT] | None
    _check: AsyncConnectionCB[ACT] | None
    _reset: AsyncConnectionCB[ACT] | None
    _reconnect_failed: AsyncConnectFailedCB | None
    _tasks: AQueue[MaintenanceTask]
    _sched: AsyncScheduler

    async def _return_connection(self, conn: Any) -> None:
        """Bring a returned connection back to a clean state, then reuse or retire it."""
        conn._pool = None
        # Retired unless the reset completes: set before the try, so that an
        # interruption anywhere (even inside the except below) leaves a reason.
        reason: str | None = "reset_failed"
        try:
            reason = await self._reset_connection(conn)
        except BaseException:
            # Interrupted mid-reset (a cancellation, KeyboardInterrupt, gevent.Timeout):
            # the session's state is unknown, so the connection is retired, and the
            # interruption goes on to whoever ran the return (a worker logs it).
            logger.warning("reset of a returned connection interrupted: discarding %s", conn)
            raise
        finally:
            with self._lock:
                now = monotonic()
                self._transit_change_locked(now, -1)
                close_now = self._put_back_locked(conn, now, reason)
            if close_now:
                await self._close_connection(conn)

    async def _reset_connection(self, conn: Any) -> str | None:
        """Roll back and run ``reset``; return why the connection must go, or None.

        The WARNING records follow psycopg_pool's, which programs and tests count: a
        connection that cannot be brought back is closed at once, the ``reset``
        callback still runs, and a connection found closed at the end is reported
        ("discarding closed connection") and counted in ``returns_bad``.
        """
        status = conn.pgconn.transaction_status
        reason: str | None = "broken" if status == UNKNOWN else None
        if status in (INTRANS, INERROR):
            logger.warning("rolling back returned connection: %s", conn)
            with self._lock:
                self._count_error_locked("rollback_on_return")
            try:
                await conn.rollback()
            except Exception as ex:  # an interruption is not a failed reset: it goes on
                logger.warning(
                    "rollback failed: %s: %s. Discarding connection %s", type(ex).__name__, ex, conn
                )
                reason = "broken" if conn.closed else "reset_failed"
                await self._discard_on_return(conn)
        elif status not in (IDLE, UNKNOWN):
            logger.warning("closing returned connection: %s", conn)
            reason = "reset_failed"
            await self._discard_on_return(conn)
        if self._reset is not None and status != UNKNOWN:
            # Called even on a connection just closed above, as psycopg_pool does.
            try:
                await self._run_callback("reset", self._reset, conn)
            except Exception as ex:
                logger.warning("error resetting connection: %s", ex)
                if reason is None:
                    reason = "reset_failed"
                    await self._discard_on_return(conn)
        if conn.pgconn.transaction_status == UNKNOWN:
            pool_warning(self, "discarding closed connection: %s", conn)
            with self._lock:
                self._agg.returns_bad += 1
                if status == UNKNOWN:
                    self._count_error_locked("broken")
        return reason

    async def _discard_on_return(self, conn: Any) -> None:
        """Count and close a returned connection that cannot be brought back."""
        with self._lock:
            self._count_error_locked("reset_failed")
        await self._close_connection(conn)

    @staticmethod
    async def _run_callback(what: str, callback: AsyncConnectionCB[ACT], conn: Any) -> None:
        """Run a user callback on *conn*; it must leave no transaction open."""
        await callback(conn)
        status = conn.pgconn.transaction_status
        if status != IDLE:
            raise e.ProgrammingError(
                f"connection left in status {TransactionStatus(status).name} by {what}"
                f" function {callback}: discarded"
            )

    async def _close_connection(self, conn: Any) -> None:
        conn._pool = None
        try:
            await conn.close()
        except ACLIENT_EXCEPTIONS as ex:
            logger.debug("error closing connection in %r: %s", self.name, ex)

    # --- maintenance requested by users ---

    async def drain(self) -> None:
        """Replace every connection: idle ones now, checked-out ones when they return.

        Useful after something the connections captured changed (adapters, settings).
        """
        with self._lock:
            now = self._drained_at = monotonic()
            for conn in self._out:  # so that putconn's fast path retires them too
                conn._expire_at = 0.0
            if self._desk is not None:  # and the compiled blocks' exits, which keep it
                self._desk.drains += 1
            while self._idle:
                self._retire_locked(self._idle.popleft(), "drain", now, replace=True)
        self._flush_notifications()

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the pool's size limits while it runs.

        Growing opens connections at once; shrinking closes idle connections above the
        new *max_size* now, and checked-out ones when they return.
        """
        min_size, max_size = self._check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._lock:
            ngrow = max(0, min_size - self._nconns)
            self._min_size = min_size
            self._max_size = max_size
            self._nconns += ngrow
            now = monotonic()
            while self._nconns > max_size and self._idle:
                self._retire_locked(self._idle.popleft(), "shrink", now, replace=False)
            if self._desk is not None:  # its blocks then give back through Python
                self._desk.surplus = self._nconns > max_size
        for _ in range(ngrow):
            self.run_task(AddConnection(self))
        self._flush_notifications()

    async def check(self) -> None:
        """Test every idle connection now; replace those that are broken or expired."""
        with self._lock:
            conns = list(self._idle)
            self._idle.clear()
            self._transit_change_locked(monotonic(), len(conns))  # busy while being checked
            if self._grow_if_useful_locked():
                self.run_task(AddConnection(self, growing=True))
        for i, conn in enumerate(conns):
            reason: str | None = None
            if conn._expire_at <= monotonic():
                logger.info("discarding expired connection %s", conn)
                reason = "max_lifetime"
            else:
                try:
                    await self.check_connection(conn)
                except Exception:
                    pool_warning(self, "discarding broken connection: %s", conn)
                    reason = "broken"
                except BaseException:
                    # Interrupted (the caller cancelled, or a KeyboardInterrupt): stop
                    # checking, and let the interruption go on once every connection
                    # taken out is accounted for again.
                    await self._abandon_check(conn, conns[i + 1 :])
                    raise
            with self._lock:
                now = monotonic()
                self._transit_change_locked(now, -1)
                if reason == "broken":
                    self._agg.connections_lost += 1
                    self._count_error_locked("broken")
                close_now = self._put_back_locked(conn, now, reason)
            if close_now:
                await self._close_connection(conn)
        self._flush_notifications()

    async def _abandon_check(self, current: Any, unchecked: list[Any]) -> None:
        """Put back the connections of an interrupted `check()`.

        The one being checked is in an unknown state (mid-query) and is retired; those
        not checked yet go back as they were.
        """
        with self._lock:
            now = monotonic()
            self._transit_change_locked(now, -1 - len(unchecked))
            to_close = [current] if self._put_back_locked(current, now, "broken") else []
            to_close += [conn for conn in unchecked if self._put_back_locked(conn, now)]
        for conn in to_close:
            await self._close_connection(conn)
        self._flush_notifications()

    @staticmethod
    async def check_connection(conn: ACT) -> None:
        """Raise if *conn* does not answer an empty query; usable as the ``check`` callback."""
        if conn.autocommit:
            await conn.execute("")
            return
        await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            with suppress(Exception):  # keep the original error if the connection broke
                await conn.set_autocommit(False)

    async def reconnect_failed(self) -> None:
        """Called when a connection could not be opened within ``reconnect_timeout``."""
        if self._reconnect_failed is not None:
            await aensure(self._reconnect_failed, self)

    # --- background work ---

    def run_task(self, task: MaintenanceTask) -> None:
        """Hand *task* to a background worker."""
        self._tasks.put_nowait(task)

    async def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        """Hand *task* to a background worker in *delay* seconds."""
        self._sched.enter(delay, task.tick)

    @classmethod
    async def worker(cls, q: AQueue[MaintenanceTask]) -> None:
        """Run maintenance tasks from *q* until told to stop (what each worker runs)."""
        await _worker(q)

    def _schedule_close(self, conn: Any, *, replace: bool) -> None:
        self.run_task(CloseConnection(self, conn, replace=replace))

    async def _connect(self, timeout: float | None = None) -> ACT:
        """Open and configure a new connection; count it, and its failure.

        A ``conninfo`` or ``kwargs`` callable that raises (a secrets vault, a token
        fetch) fails the connect like the server refusing it would: counted, kept as
        the cause of a later PoolTimeout, and seen by readiness.
        """
        t0 = monotonic()
        conninfo: str = ""
        kwargs: dict[str, Any] = {}
        failure: BaseException | None = None
        try:
            conninfo = await aensure(self.conninfo) if callable(self.conninfo) else self.conninfo
            kwargs = (await aensure(self.kwargs) if callable(self.kwargs) else self.kwargs) or {}
            if timeout:
                kwargs = {**kwargs, "connect_timeout": max(round(timeout), 1)}
            conn = await self.connection_class.connect(conninfo, **kwargs)
        except BaseException as ex:
            # What is kept, logged, observed and raised is a copy without the secrets
            # (interruptions and cancellations pass through as they are).
            failure = without_secrets(ex, conninfo, kwargs)
            with self._lock:
                self._connect_failed_locked(monotonic() - t0, failure)
            if self._observer:
                self._observer.on_connect(monotonic() - t0, failure)
                self._flush_notifications()
        if failure is not None:
            raise failure  # outside the handler, so the original is not its __context__
        conn._pool = self  # type: ignore[assignment]  # keeps `with conn` in configure open
        try:
            if not self._server_max_read:
                await self._read_server_budget(conn)
            if self._configure is not None:
                await self._run_callback("configure", self._configure, conn)
        except BaseException as ex:  # even an interruption must not leave it open
            with self._lock:
                self._connect_failed_locked(monotonic() - t0, ex)
            await self._close_connection(conn)
            raise
        with self._lock:
            t1 = monotonic()
            self._connected_locked(conn, t0, t1)
        if self._observer:
            self._observer.on_connect(t1 - t0, None)
        return conn

    async def _read_server_budget(self, conn: Any) -> None:
        # Read once per pool: the fleet-budget alert compares the sum of max_size
        # across instances with what the server allows ordinary users.
        self._server_max_read = True
        self._note_server_identity(conn)
        try:
            cur = await conn.execute(SERVER_BUDGET_SQL)
            row = await cur.fetchone()
            if row is not None:
                self.server_max_connections = int(row[0])
        except Exception as ex:
            logger.debug("could not read max_connections in %r: %s", self.name, ex)
        finally:
            if conn.pgconn.transaction_status != IDLE:
                with suppress(Exception):
                    await conn.rollback()

    async def _add_connection(self, attempt: Backoff | None, growing: bool = False) -> None:
        """Open one connection for the pool, retrying with backoff up to reconnect_timeout."""
        now = monotonic()
        if attempt is None:
            attempt = Backoff(timeout=self.reconnect_timeout)
        try:
            conn = await self._connect()
        except BaseException as ex:
            # An interruption (KeyboardInterrupt or gevent.Timeout from configure) is
            # handled as a failed attempt, so that the room reserved for the connection
            # is retried or released; then it goes on to the worker, which logs it.
            # psycopg_pool's wording, with the class added where the message alone
            # would be empty (a bare KeyboardInterrupt).
            pool_warning(self, "error connecting in %r: %s", self.name, str(ex) or repr(ex))
            if attempt.time_to_give_up(now):
                pool_warning(
                    self,
                    "reconnection attempt in pool %r failed after %s sec",
                    self.name,
                    self.reconnect_timeout,
                )
                with self._lock:
                    self._nconns -= 1
                    if growing:
                        self._growing = False
                await self.reconnect_failed()
            else:
                attempt.update_delay(now)
                await self.schedule_task(
                    AddConnection(self, attempt, growing=growing), attempt.delay
                )
            if not isinstance(ex, Exception):
                raise
            return

        logger.info("adding new connection to the pool %r", self.name)
        with self._lock:
            close_now = self._put_back_locked(conn, monotonic())
            if growing:
                # Keep growing while below min_size, or while requests wait and there is room.
                if not self._closed and (
                    self._nconns < self._min_size
                    or (self._nconns < self._max_size and self._waiting)
                ):
                    self._nconns += 1
                    logger.info("growing pool %r to %s", self.name, self._nconns)
                    self.run_task(AddConnection(self, growing=True))
                else:
                    self._growing = False
        if close_now:
            await self._close_connection(conn)
        self._flush_notifications()

    async def _shrink_pool(self) -> None:
        """Close one idle connection if some stayed unused for a whole max_idle period."""
        with self._lock:
            self._fold_holds_locked()  # the compiled blocks' _idle_ran_out among the rest
            # The next period starts now, with the idle list as it is.
            ran_out, self._idle_ran_out = self._idle_ran_out, not self._idle
            if not (self._nconns > self._min_size and not ran_out and self._idle):
                return
            # The least recently used: the next one out (FIFO), or the last one (LIFO).
            conn = self._idle.pop() if self.use_lifo else self._idle.popleft()
            self._idle_ran_out = not self._idle
            self._retire_locked(conn, "max_idle", monotonic(), replace=False)
            size = self._nconns
        logger.info(
            "shrinking pool %r to %s: the idle list never ran out in the last %s sec",
            self.name,
            size,
            self.max_idle,
        )
        self._flush_notifications()

    async def _scan_leaks(self) -> None:
        with self._lock:
            found = self._leak_scan_locked(monotonic())
        for held, stack in found:
            logger.warning(
                "connection of pool %r checked out for %.3f sec (leak_timeout=%s),"
                " possibly leaked; taken at:\n%s",
                self.name,
                held,
                self.leak_timeout,
                stack,
            )
            if self._observer:
                self._observer.on_leak(held, stack)

    def _leak_scan_interval(self) -> float:
        assert self.leak_timeout is not None
        return min(max(self.leak_timeout / 4, 0.05), 5.0)


async def _worker(tasks: AQueue[MaintenanceTask]) -> None:
    """Run maintenance tasks until a StopWorker arrives; survive any task failure."""
    while True:
        task = await tasks.get()
        if isinstance(task, StopWorker):
            return
        try:
            await task.run()
        except ACLIENT_EXCEPTIONS as ex:
            if not isinstance(ex, Exception) and acancelling():
                # The worker itself is cancelled (its event loop is ending): waiting
                # for the next task would keep the loop from ever finishing.
                raise
            logger.warning("task run %s failed: %s: %s", task, type(ex).__name__, ex)
        except BaseException as ex:
            # KeyboardInterrupt, SystemExit or gevent.Timeout raised by a user callback
            # (configure, reset, reconnect_failed) the task ran. The task has retired
            # its connection and fixed the counts before letting it out; there is no
            # caller to raise it to, and a dead worker would stall the pool for good.
            logger.error(
                "task run %s interrupted: %s: %s; the worker goes on", task, type(ex).__name__, ex
            )
