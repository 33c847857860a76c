"""The pools compared, behind one small interface each, sync and async.

Every adapter opens a pool of the given size on the DSN and offers `getput(ops)`
(take and give back a connection, *ops* times), `ctx(ops)` (the library's own
"with" form, or None when it has none), `run(sql)` for one query on a borrowed
connection, and `close()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
from prometheus_client import CollectorRegistry

import poolwatch
from poolwatch.exporter.app import Exporter


class SyncPeer:
    name: str
    pool: Any

    def getput(self, ops: int) -> None:
        raise NotImplementedError

    ctx: Callable[[int], None] | None = None

    def run(self, sql: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.pool.close()


class PsycopgStyle(SyncPeer):
    """poolwatch and psycopg_pool share their API."""

    def __init__(self, name: str, module: Any, dsn: str, size: int, **extra: Any) -> None:
        self.name = name
        self.pool = module.ConnectionPool(
            dsn, min_size=size, max_size=size, open=True, timeout=60, **extra
        )
        self.pool.wait()
        self.ctx = self._ctx

    def getput(self, ops: int) -> None:
        getconn, putconn = self.pool.getconn, self.pool.putconn
        for _ in range(ops):
            putconn(getconn())

    def _ctx(self, ops: int) -> None:
        connection = self.pool.connection
        for _ in range(ops):
            with connection():
                pass

    def run(self, sql: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(sql)


class Psycopg2Peer(SyncPeer):
    """psycopg2's ThreadedConnectionPool: no waiting (it raises when empty), no `with`."""

    def __init__(self, dsn: str, size: int) -> None:
        from psycopg2.pool import ThreadedConnectionPool

        self.name = "psycopg2 ThreadedConnectionPool"
        self.pool = ThreadedConnectionPool(size, size, dsn)

    def getput(self, ops: int) -> None:
        getconn, putconn = self.pool.getconn, self.pool.putconn
        for _ in range(ops):
            putconn(getconn())

    def run(self, sql: str) -> None:
        conn = self.pool.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.rollback()
        finally:
            self.pool.putconn(conn)

    def close(self) -> None:
        self.pool.closeall()


class SQLAlchemyPeer(SyncPeer):
    """SQLAlchemy's QueuePool over psycopg 3 connections, its defaults otherwise."""

    def __init__(self, dsn: str, size: int, autocommit: bool = False) -> None:
        from sqlalchemy.pool import QueuePool

        self.name = "SQLAlchemy QueuePool"
        self.pool = QueuePool(
            lambda: psycopg.connect(dsn, autocommit=autocommit),
            pool_size=size,
            max_overflow=0,
            timeout=60,
        )
        held = [self.pool.connect() for _ in range(size)]  # open them all up front
        for c in held:
            c.close()
        self.ctx = self._ctx

    def getput(self, ops: int) -> None:
        connect = self.pool.connect
        for _ in range(ops):
            connect().close()

    def _ctx(self, ops: int) -> None:
        connect = self.pool.connect
        for _ in range(ops):
            with connect():
                pass

    def run(self, sql: str) -> None:
        with self.pool.connect() as conn:
            cur = conn.cursor()
            cur.execute(sql)
            conn.rollback()

    def close(self) -> None:
        self.pool.dispose()


def poolwatch_variants(dsn: str, size: int) -> list[tuple[SyncPeer, Callable[[], None]]]:
    """poolwatch with metrics off, with Prometheus, and with Prometheus + OTel.

    Returns (peer, scrape) pairs; *scrape* renders what an exporter would, so that a
    round can include it. The pool's own aggregates are always on: "off" only means
    that nothing exports them.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from poolwatch.metrics.otel import OTelBridge

    off = PsycopgStyle("poolwatch, metrics off", poolwatch, dsn, size)
    prom = PsycopgStyle("poolwatch + Prometheus", poolwatch, dsn, size)
    both = PsycopgStyle("poolwatch + Prometheus + OTel", poolwatch, dsn, size)
    prom_exporter = Exporter([prom.pool], registry=CollectorRegistry(), include_registry=False)
    both_exporter = Exporter([both.pool], registry=CollectorRegistry(), include_registry=False)
    reader = InMemoryMetricReader()
    OTelBridge([both.pool], meter_provider=MeterProvider(metric_readers=[reader]))

    def scrape_both() -> None:
        both_exporter.metrics_text(openmetrics=False)
        reader.get_metrics_data()

    return [
        (off, lambda: None),
        (prom, lambda: prom_exporter.metrics_text(openmetrics=False)),
        (both, scrape_both),
    ]


# --- async ---


class AsyncPeer:
    name: str
    pool: Any

    async def getput(self, ops: int) -> None:
        raise NotImplementedError

    async def ctx(self, ops: int) -> None:
        raise NotImplementedError

    async def run(self, sql: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.pool.close()


class AsyncPsycopgStyle(AsyncPeer):
    def __init__(self, name: str, module: Any) -> None:
        self.name = name
        self.module = module

    async def open(self, dsn: str, size: int, **extra: Any) -> AsyncPsycopgStyle:
        self.pool = self.module.AsyncConnectionPool(
            dsn, min_size=size, max_size=size, open=False, timeout=60, **extra
        )
        await self.pool.open(wait=True)
        return self

    async def getput(self, ops: int) -> None:
        getconn, putconn = self.pool.getconn, self.pool.putconn
        for _ in range(ops):
            await putconn(await getconn())

    async def ctx(self, ops: int) -> None:
        connection = self.pool.connection
        for _ in range(ops):
            async with connection():
                pass

    async def run(self, sql: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql)


class AsyncpgPeer(AsyncPeer):
    """asyncpg's pool, its defaults (release resets the session: a round trip)."""

    name = "asyncpg pool"

    async def open(self, dsn: str, size: int) -> AsyncpgPeer:
        import asyncpg
        from psycopg.conninfo import conninfo_to_dict

        p = conninfo_to_dict(dsn)
        self.pool = await asyncpg.create_pool(
            host=p["host"], port=int(p["port"]), user=p["user"], password=p["password"],
            database=p["dbname"], min_size=size, max_size=size,
        )  # fmt: skip
        return self

    async def getput(self, ops: int) -> None:
        acquire, release = self.pool.acquire, self.pool.release
        for _ in range(ops):
            await release(await acquire())

    async def ctx(self, ops: int) -> None:
        acquire = self.pool.acquire
        for _ in range(ops):
            async with acquire():
                pass

    async def run(self, sql: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval(sql)


async def async_peers(dsn: str, size: int, **extra: Any) -> list[AsyncPeer]:
    return [
        await AsyncPsycopgStyle("poolwatch", poolwatch).open(dsn, size, **extra),
        await AsyncPsycopgStyle("psycopg_pool 3.3", psycopg_pool).open(dsn, size, **extra),
        await AsyncpgPeer().open(dsn, size),
    ]


def new_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()
