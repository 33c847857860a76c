"""The pool's own memory: per connection and per waiting request, measured with tracemalloc.

"Own" means what the pool library's code allocates (its bookkeeping per connection,
its waiter objects and the futures or locks it creates for them), attributed by
tracemalloc to the library's source files; the psycopg connection objects and
libpq's buffers, which any pool holds alike, are not counted. Per connection is the
slope between a pool of 1 and a pool of 1 + N connections; per waiter, the growth
while W requests wait on an exhausted pool of 1 (threads for the sync pool, asyncio
tasks for the async one).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import psycopg_pool

import poolwatch

INTRO = (
    "tracemalloc, counting only what each pool library's own source files allocate (the"
    " psycopg connection objects and libpq buffers are the same in every pool and left"
    " out). Per connection: the slope from a pool of 1 to a pool of 17. Per waiter: the"
    " growth while 32 requests wait on an exhausted pool of 1, threads for the sync"
    " pool, asyncio tasks for the async one. Median of 3 measurements. poolwatch's"
    " per-pool figure includes its aggregates (every histogram of the metric contract)."
)
LIBRARIES = {
    "poolwatch": (poolwatch, "*/poolwatch/*"),
    "psycopg_pool 3.3": (psycopg_pool, "*/psycopg_pool/*"),
}
GROW = 16
WAITERS = 32


def _traced(pattern: str) -> int:
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, pattern)])
    return sum(stat.size for stat in snap.statistics("filename"))


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():  # bounded: 30 s
        if time.monotonic() > deadline:
            raise RuntimeError(f"memory benchmark: {what} did not happen within 30 s")
        time.sleep(0.01)


def _pool_bytes(module: Any, pattern: str, dsn: str, size: int) -> int:
    before = _traced(pattern)
    pool = module.ConnectionPool(dsn, min_size=size, max_size=size, open=True)
    try:
        pool.wait()
        return _traced(pattern) - before
    finally:
        pool.close()


def _sync_waiter_bytes(module: Any, pattern: str, dsn: str) -> float:
    with module.ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        pool.wait()
        held = pool.getconn()
        before = _traced(pattern)

        def wait_one() -> None:
            pool.putconn(pool.getconn(timeout=60))

        threads = [threading.Thread(target=wait_one, daemon=True) for _ in range(WAITERS)]
        for t in threads:
            t.start()
        _until(lambda: pool.get_stats()["requests_waiting"] == WAITERS, "the waits")
        during = _traced(pattern)
        pool.putconn(held)
        for t in threads:
            t.join(timeout=30)
    return (during - before) / WAITERS


async def _async_waiter_bytes(module: Any, pattern: str, dsn: str) -> float:
    async with module.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        await pool.wait()
        held = await pool.getconn()
        before = _traced(pattern)

        async def wait_one() -> None:
            await pool.putconn(await pool.getconn(timeout=60))

        tasks = [asyncio.create_task(wait_one()) for _ in range(WAITERS)]
        deadline = time.monotonic() + 30
        while pool.get_stats()["requests_waiting"] < WAITERS:  # bounded: 30 s
            if time.monotonic() > deadline:
                raise RuntimeError("memory benchmark: the async waits did not happen in 30 s")
            await asyncio.sleep(0.01)
        during = _traced(pattern)
        await pool.putconn(held)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return (during - before) / WAITERS


def measure(dsn: str, repeats: int = 3) -> dict[str, dict[str, float]]:
    """library -> {"pool": bytes, "per connection": bytes, "per waiter (sync)", "(async)"}."""
    out: dict[str, dict[str, float]] = {}
    tracemalloc.start(1)
    try:
        for name, (module, pattern) in LIBRARIES.items():
            _pool_bytes(module, pattern, dsn, 1)  # first use: imports and caches, not counted
            small, slope, sync_w, async_w = [], [], [], []
            for _ in range(repeats):
                one = _pool_bytes(module, pattern, dsn, 1)
                many = _pool_bytes(module, pattern, dsn, 1 + GROW)
                per = (many - one) / GROW
                small.append(one - per)
                slope.append(per)
                sync_w.append(_sync_waiter_bytes(module, pattern, dsn))
                async_w.append(asyncio.run(_async_waiter_bytes(module, pattern, dsn)))
            out[name] = {
                "pool": statistics.median(small),
                "per connection": statistics.median(slope),
                "per waiter (sync)": statistics.median(sync_w),
                "per waiter (async)": statistics.median(async_w),
            }
    finally:
        tracemalloc.stop()
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| library | pool, fixed (bytes) | per connection (bytes) | per waiting thread (bytes)"
        " | per waiting task (bytes) |",
        "|---|---:|---:|---:|---:|",
    ]
    for lib, r in results.items():
        lines.append(
            f"| {lib} | {r['pool']:,.0f} | {r['per connection']:,.0f}"
            f" | {r['per waiter (sync)']:,.0f} | {r['per waiter (async)']:,.0f} |"
        )
    return "\n".join(lines)
