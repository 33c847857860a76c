"""The async waiter's wake-up path alone: 64 tasks on a pool of 4, no query.

Each task takes a connection, yields to the event loop once while holding it (so
that the others queue), and gives it back; almost every request waits and is woken
by a return. The figure is this process's CPU time per take-and-return, hand-off
included, which is what the pool adds to each query in the "64 asyncio tasks" row
of the contention table (whose CPU per query column includes psycopg's execute).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import psycopg_pool

import poolwatch

TASKS, SIZE = 64, 4
LIBRARIES = {"poolwatch": poolwatch, "psycopg_pool 3.3": psycopg_pool}


async def _cpu_per_handoff(pool: Any, ops: int) -> tuple[float, float]:
    async def body() -> None:
        for _ in range(ops):
            conn = await pool.getconn()
            await asyncio.sleep(0)
            await pool.putconn(conn)

    waits_before = _waits(pool)
    t0 = time.process_time()
    await asyncio.wait_for(asyncio.gather(*(body() for _ in range(TASKS))), 300)
    cpu = time.process_time() - t0
    return cpu / (TASKS * ops) * 1e6, (_waits(pool) - waits_before) / (TASKS * ops)


def _waits(pool: Any) -> int:
    return int(pool.get_stats().get("requests_queued", 0))


async def _measure(dsn: str, rounds: int, ops: int) -> dict[str, list[tuple[float, float]]]:
    pools = {}
    for name, module in LIBRARIES.items():
        pools[name] = module.AsyncConnectionPool(
            dsn, min_size=SIZE, max_size=SIZE, open=False, timeout=60
        )
        await pools[name].open(wait=True)
    out: dict[str, list[tuple[float, float]]] = {}
    try:
        for r in range(rounds):
            names = list(pools) if r % 2 == 0 else list(pools)[::-1]
            for name in names:
                out.setdefault(name, []).append(await _cpu_per_handoff(pools[name], ops))
    finally:
        for pool in pools.values():
            await pool.close()
    return out


def measure(dsn: str, rounds: int, ops: int) -> dict[str, list[tuple[float, float]]]:
    """library -> (CPU µs per take-and-return, share of requests that waited) per round."""
    return asyncio.run(_measure(dsn, rounds, ops))


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    lines = [
        "| library | CPU µs per take-and-return | vs psycopg_pool (median of in-round ratios)"
        " | requests that waited |",
        "|---|---:|---:|---:|",
    ]
    base = results["psycopg_pool 3.3"]
    for lib, runs in results.items():
        ratio = statistics.median(r[0] / b[0] for r, b in zip(runs, base))
        waited = statistics.median(r[1] for r in runs)
        lines.append(
            f"| {lib} | {statistics.median(r[0] for r in runs):.1f} | {ratio:.2f} | {waited:.0%} |"
        )
    return "\n".join(lines)
