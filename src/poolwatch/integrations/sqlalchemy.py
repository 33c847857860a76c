"""SQLAlchemy: use a poolwatch pool as the engine's pool, or watch SQLAlchemy's own pool.

- `create_engine(pool, url)`: an Engine whose connections come from a poolwatch pool
  (SQLAlchemy's NullPool on top, so that SQLAlchemy keeps no second pool); closing a
  SQLAlchemy connection gives it back to poolwatch.
- `instrument(engine, name=...)`: the same metric families for SQLAlchemy's QueuePool,
  from its pool events plus timing around checkout, so that the dashboards and alerts
  work unchanged. What SQLAlchemy does not expose is listed in `SQLAlchemyPool`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..observe import Checkout, CheckoutList, PoolAggregates, PoolSnapshot


def create_engine(pool: Any, url: str = "postgresql+psycopg://", **engine_options: Any) -> Any:
    """An Engine drawing its connections from *pool* (which needs ``close_returns=True``).

    Sessions, transactions and errors behave as with SQLAlchemy's own pool: SQLAlchemy
    rolls back on release, then closes the connection, which returns it to *pool*.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if not getattr(pool, "close_returns", False):
        raise ValueError(
            f"pool {pool.name!r} needs close_returns=True: SQLAlchemy gives a connection"
            " back by closing it"
        )
    if "poolclass" in engine_options or "creator" in engine_options:
        raise ValueError("create_engine() sets poolclass and creator itself")
    return sqlalchemy.create_engine(url, creator=pool.getconn, poolclass=NullPool, **engine_options)


class SQLAlchemyPool:
    """A SQLAlchemy QueuePool seen through poolwatch's eyes (`snapshot`, `aggregates`).

    Measured: checkout waits (timed around the pool's ``_do_get``, with their outcome:
    ok, timeout, error), waits (a checkout that found no connection checked in), hold
    time (checkout to checkin), connect time and failures (timed around the creator),
    closes with a reason (invalidated: broken; recycled: max_lifetime; otherwise
    close), connections by state, the used-seconds integral, the server's
    max_connections (read on the first connect).

    Not measurable from outside SQLAlchemy: connections being opened (``opening`` is
    always 0: the creator runs inside a checkout), leak detection with a stack (there
    is no leak_timeout; the oldest checkout age is there), ``check_failed`` and
    ``reset_failed`` as separate kinds (SQLAlchemy invalidates; they count as broken),
    and the age of a connection that SQLAlchemy discards without an event.
    ``engine.dispose()`` replaces the pool: instrument the engine again after it.
    """

    def __init__(self, engine: Any, name: str) -> None:
        from sqlalchemy import event

        from ..errors import PoolConfigError
        from ..pool.base import check_name

        if not check_name(name):
            raise PoolConfigError("name must be a non-empty str")
        self.name = name
        self.server_identity: dict[str, str] | None = None
        self.server_max_connections: int | None = None
        self.pool = engine.pool
        self._lock = threading.Lock()
        self._agg = PoolAggregates()
        self._out: dict[int, float] = {}  # id(connection record) -> checkout time
        self._held: dict[int, Any] = {}  # id(connection record) -> its DBAPI connection
        self._born: dict[int, float] = {}  # id(dbapi connection) -> connect time
        self._waiting = 0
        self._wait_started: list[float] = []
        self._done_area = 0.0
        self._closed = False
        self._wrap_do_get()
        self._wrap_creator()
        event.listen(self.pool, "checkout", self._on_checkout)
        event.listen(self.pool, "checkin", self._on_checkin)
        event.listen(self.pool, "connect", self._on_connect)
        event.listen(self.pool, "invalidate", self._on_invalidate)
        event.listen(self.pool, "soft_invalidate", self._on_soft_invalidate)
        event.listen(self.pool, "close", self._on_close)
        weakref.finalize(engine, self._mark_closed)

    # --- what the exporters read ---

    @property
    def closed(self) -> bool:
        return self._closed

    def _mark_closed(self) -> None:
        self._closed = True

    def snapshot(self) -> PoolSnapshot:
        pool = self.pool
        with self._lock:
            now = time.monotonic()
            used = len(self._out)
            oldest = min(self._out.values(), default=None)
            oldest_wait = min(self._wait_started, default=None)
            area = self._done_area + sum(now - t for t in self._out.values())
            waiting = self._waiting
        idle = pool.checkedin()
        max_size = pool.size() + max(0, getattr(pool, "_max_overflow", 0))
        return PoolSnapshot(
            name=self.name,
            min_size=0,
            max_size=max_size,
            size=idle + used,
            idle=idle,
            used=used,
            opening=0,
            waiting=waiting,
            closed=self._closed,
            timeout=float(getattr(pool, "_timeout", 0.0)),
            oldest_checkout_seconds=0.0 if oldest is None else now - oldest,
            oldest_wait_seconds=0.0 if oldest_wait is None else now - oldest_wait,
            leaked=0,
            leak_timeout=None,
            used_seconds_total=area,
            server_max_connections=self.server_max_connections,
        )

    def aggregates(self) -> PoolAggregates:
        with self._lock:
            return self._agg.copy()

    def checkouts(self) -> CheckoutList:
        """The checkouts held now, with their psycopg connections (`poolwatch.insight`)."""
        with self._lock:
            held = self._held
            return CheckoutList(
                at=time.monotonic(),
                waits_total=self._agg.waits,
                waiting=self._waiting,
                leak_timeout=None,
                checkouts=tuple(
                    Checkout(held[k], t, None) for k, t in self._out.items() if k in held
                ),
            )

    def track_call_sites(self, site_of: Any) -> None:
        """Call sites are named on poolwatch's own checkout path: not for SQLAlchemy pools."""
        if site_of is not None:
            raise NotImplementedError("call sites are not attributed for SQLAlchemy pools")

    # --- timing what has no event ---

    def _wrap_do_get(self) -> None:
        from sqlalchemy import exc

        original: Callable[[], Any] = self.pool._do_get

        def do_get() -> Any:
            t0 = time.monotonic()
            with self._lock:
                self._agg.requests += 1
                queued = self.pool.checkedin() == 0
                if queued:
                    self._agg.waits += 1
                self._waiting += 1
                self._wait_started.append(t0)
            outcome = "error"
            try:
                record = original()
                outcome = "ok"
                return record
            except exc.TimeoutError:
                outcome = "timeout"
                raise
            finally:
                wait = time.monotonic() - t0
                with self._lock:
                    self._waiting -= 1
                    self._wait_started.remove(t0)
                    self._agg.acquire[outcome].observe(wait)
                    if queued:
                        self._agg.queued_wait_seconds += wait
                    if outcome == "timeout":
                        self._agg.count_error("timeout")
                    elif outcome == "error":
                        self._agg.request_errors += 1

        self.pool._do_get = do_get

    def _wrap_creator(self) -> None:
        from ..pool._redact import connect_error_class

        # _invoke_creator is the pool's normalised creator: one argument, the record
        original = self.pool._invoke_creator

        def creator(record: Any) -> Any:
            t0 = time.monotonic()
            try:
                conn = original(record)
            except Exception as ex:
                with self._lock:
                    self._agg.connect["error"].observe(time.monotonic() - t0)
                    self._agg.count_error("connect", connect_error_class(ex))
                raise
            with self._lock:
                self._agg.connect["ok"].observe(time.monotonic() - t0)
            return conn

        self.pool._invoke_creator = creator

    # --- pool events ---

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        with self._lock:
            self._agg.opened += 1
            self._born[id(dbapi_conn)] = time.monotonic()
        if self.server_identity is None:
            self._read_server(dbapi_conn)

    def _read_server(self, dbapi_conn: Any) -> None:
        from ..pool.base import SERVER_BUDGET_SQL, server_identity

        try:
            self.server_identity = server_identity(dbapi_conn)
            cur = dbapi_conn.cursor()
            cur.execute(SERVER_BUDGET_SQL)
            self.server_max_connections = int(cur.fetchone()[0])
            cur.close()
            dbapi_conn.rollback()
        except Exception:  # an identity is a nicety: never fail a connect for it
            pass

    def _on_checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        with self._lock:
            self._out[id(record)] = time.monotonic()
            self._held[id(record)] = dbapi_conn

    def _on_checkin(self, dbapi_conn: Any, record: Any) -> None:
        with self._lock:
            t = self._out.pop(id(record), None)
            self._held.pop(id(record), None)
            if t is not None:
                use = time.monotonic() - t
                self._agg.use.observe(use)
                self._done_area += use

    def _closed_conn(self, dbapi_conn: Any, reason: str) -> None:
        with self._lock:
            born = self._born.pop(id(dbapi_conn), None)
            if born is None:
                return
            self._agg.closed += 1
            self._agg.lifetime[reason].observe(time.monotonic() - born)

    def _on_invalidate(self, dbapi_conn: Any, record: Any, exception: Any) -> None:
        with self._lock:
            self._agg.count_error("broken")
            self._agg.connections_lost += 1
        self._closed_conn(dbapi_conn, "broken")

    def _on_soft_invalidate(self, dbapi_conn: Any, record: Any, exception: Any) -> None:
        self._closed_conn(dbapi_conn, "max_lifetime")

    def _on_close(self, dbapi_conn: Any, record: Any) -> None:
        self._closed_conn(dbapi_conn, "close")


def instrument(engine: Any, *, name: str, registry: Any = None) -> SQLAlchemyPool:
    """Export *engine*'s pool under the pool label *name*, with poolwatch's metric names.

    Registered with prometheus_client's default registry unless *registry* is given;
    the returned object also goes to `OTelBridge` or `create_app(pools=[...])`.
    """
    from ..metrics.prometheus import register

    watched = SQLAlchemyPool(engine, name)
    register(watched, registry)
    return watched
