"""Drive psycopg_pool and poolwatch through the same script, sync or async.

A scenario is an ``async def scenario(d: Driver) -> dict``: it calls the pool only
through the driver, so the same text runs against either library's sync pool (called
directly from the coroutine) or async pool (awaited). What it returns is what a user
can observe; the driver adds the WARNING records, the `warnings` raised and the
callbacks' call counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg_pool

ERROR_NAMES = ("PoolTimeout", "PoolClosed", "TooManyRequests")
POOL_LOGGERS = ("psycopg.pool", "poolwatch.pool")
# Measures of time: their values differ from run to run, only their presence is compared.
TIMED_STATS = {"requests_wait_ms", "usage_ms", "connections_ms"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(summarise_log(record.getMessage()))


def summarise_log(message: str) -> str:
    """The part of a pool warning that does not depend on the run (no connection repr)."""
    head = message.split(": ", 1)[0]
    return head.split(" <", 1)[0]


class Driver:
    """One library, sync or async: builds its pools and calls them."""

    def __init__(self, lib: Any, is_async: bool, dsn: str, pg: Any) -> None:
        self.lib = lib
        self.is_async = is_async
        self.dsn = dsn
        self.pg = pg
        self.calls: Counter[str] = Counter()
        self.obs: dict[str, Any] = {}

    # --- building pools ---

    def pool(self, *, null: bool = False, **kwargs: Any) -> Any:
        name = ("Async" if self.is_async else "") + ("Null" if null else "") + "ConnectionPool"
        kwargs.setdefault("name", "p")
        kwargs.setdefault("open", False)
        conninfo = kwargs.pop("conninfo", self.dsn)
        return getattr(self.lib, name)(conninfo, **kwargs)

    def callback(self, name: str, action: Callable[[Any], Any] | None = None) -> Any:
        """A callback counting its calls under *name*, then running *action* (if any).

        *action* may return an awaitable (``conn.execute`` of an async connection):
        the async variant awaits it.
        """
        calls = self.calls

        if self.is_async:

            async def acb(*args: Any) -> None:
                calls[name] += 1
                if action is not None:
                    rv = action(*args)
                    if inspect.isawaitable(rv):
                        await rv

            return acb

        def cb(*args: Any) -> None:
            calls[name] += 1
            if action is not None:
                action(*args)

        return cb

    # --- calling them ---

    async def call(self, value: Any) -> Any:
        """The result of a pool or connection call, awaited if the library is async."""
        if inspect.isawaitable(value):
            return await value
        return value

    async def attempt(self, key: str, value: Callable[[], Any]) -> Any:
        """Run `value()`; record under *key* what it returned, or which error it raised."""
        try:
            rv = await self.call(value())
        except Exception as ex:
            self.obs[key] = describe_error(ex)
            return None
        self.obs[key] = describe_value(rv)
        return rv

    @contextlib.asynccontextmanager
    async def borrow(self, pool: Any, **kwargs: Any) -> AsyncIterator[Any]:
        cm = pool.connection(**kwargs)
        if self.is_async:
            async with cm as conn:
                yield conn
        else:
            with cm as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def entered(self, pool: Any) -> AsyncIterator[Any]:
        if self.is_async:
            async with pool as p:
                yield p
        else:
            with pool as p:
                yield p

    async def background(self, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
        """Start *fn* concurrently (a task, or a thread for sync pools); return a joiner."""
        if self.is_async:
            task = asyncio.ensure_future(fn())
            await asyncio.sleep(0)

            async def join_task() -> None:
                await asyncio.wait_for(task, 30)

            return join_task
        thread = threading.Thread(target=lambda: asyncio.run(fn()), daemon=True)
        thread.start()

        async def join_thread() -> None:
            await asyncio.to_thread(thread.join, 30)
            assert not thread.is_alive()

        return join_thread

    async def until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)

    def stats(self, pool: Any, key: str = "stats") -> None:
        self.obs[key] = comparable_stats(pool.get_stats())

    def pid_order(self, pids: list[int]) -> list[int]:
        """Backend pids renamed 0, 1, 2... in order of first appearance."""
        seen: dict[int, int] = {}
        return [seen.setdefault(p, len(seen)) for p in pids]


def comparable_stats(stats: dict[str, int]) -> dict[str, Any]:
    return {k: (True if k in TIMED_STATS else v) for k, v in stats.items()}


def describe_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return comparable_stats(value)
    return type(value).__name__


def describe_error(ex: BaseException) -> tuple[str, tuple[str, ...]]:
    """The error's class name, and which psycopg_pool error classes would catch it."""
    caught_as = tuple(n for n in ERROR_NAMES if isinstance(ex, getattr(psycopg_pool, n)))
    return (type(ex).__name__, caught_as)


async def run_scenario(
    scenario: Callable[[Driver], Awaitable[dict[str, Any]]],
    lib: Any,
    is_async: bool,
    dsn: str,
    pg: Any,
) -> dict[str, Any]:
    """Everything a user could observe of one run, flattened to ``name -> value``."""
    driver = Driver(lib, is_async, dsn, pg)
    records = _Records()
    loggers = [logging.getLogger(n) for n in POOL_LOGGERS]
    for lg in loggers:
        lg.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await scenario(driver)
            # Let background workers finish what the last call started.
            await asyncio.sleep(0.3)
    finally:
        for lg in loggers:
            lg.removeHandler(records)
    out = dict(driver.obs)
    out["log_warnings"] = records.lines
    out["warnings"] = [
        w.category.__name__ for w in caught if not issubclass(w.category, ResourceWarning)
    ]
    out["callback_calls"] = dict(sorted(driver.calls.items()))
    return out


def differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key -> (psycopg_pool's, poolwatch's)`` for every observation that differs.

    Stats are compared counter by counter, so that one documented difference does
    not hide another.
    """
    found: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "callback_calls":
            for sub in sorted(set(a) | set(b)):
                if a.get(sub, "<absent>") != b.get(sub, "<absent>"):
                    found[f"{key}.{sub}"] = (a.get(sub, "<absent>"), b.get(sub, "<absent>"))
        elif a != b:
            found[key] = (a, b)
    return found
