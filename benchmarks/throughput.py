"""SELECT 1 throughput against raw connections, and behaviour under contention.

- T threads each running SELECT 1 on a pool of T, against T threads each holding a
  raw psycopg connection (the limit a pool can only approach). Every connection is
  in autocommit mode, raw or pooled, so that each SELECT 1 is one round trip.
- 16 and 64 threads (and 64 asyncio tasks) on a pool of 4: throughput, the wait for
  a connection (p50, p99, max) and fairness, the Jain index of per-worker completions
  (1.0: every worker got the same share; 1/n: one worker did everything).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

import poolwatch

from .peers import AsyncPeer, PsycopgStyle, SQLAlchemyPeer, SyncPeer, async_peers, new_loop

SQL = "SELECT 1"
AUTOCOMMIT = {"autocommit": True}


def jain(values: list[float]) -> float:
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def _threads(n: int, work: Callable[[int], None]) -> float:
    """Run work(i) on n threads started together; seconds until the last one ends."""
    barrier = threading.Barrier(n + 1)

    def body(i: int) -> None:
        barrier.wait()
        work(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def raw_qps(dsn: str, threads: int, ops: int) -> float:
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]
    try:

        def work(i: int) -> None:
            execute = conns[i].execute
            for _ in range(ops):
                execute(SQL)

        return threads * ops / _threads(threads, work)
    finally:
        for c in conns:
            c.close()


def pool_qps(peer: SyncPeer, threads: int, ops: int) -> float:
    run = peer.run

    def work(i: int) -> None:
        for _ in range(ops):
            run(SQL)

    return threads * ops / _threads(threads, work)


def vs_raw(dsn: str, rounds: int, total_ops: int) -> dict[int, dict[str, list[float]]]:
    """threads -> library -> qps per round."""
    out: dict[int, dict[str, list[float]]] = {}
    for threads in (1, 4, 16):
        ops = max(50, total_ops // threads)
        peers = [
            PsycopgStyle("poolwatch", poolwatch, dsn, threads, kwargs=AUTOCOMMIT),
            PsycopgStyle("psycopg_pool 3.3", psycopg_pool, dsn, threads, kwargs=AUTOCOMMIT),
        ]
        try:
            for _ in range(rounds):
                out.setdefault(threads, {}).setdefault("raw connections", []).append(
                    raw_qps(dsn, threads, ops)
                )
                for peer in peers:
                    out[threads].setdefault(peer.name, []).append(pool_qps(peer, threads, ops))
            print(f"  vs raw: {threads} threads done", file=sys.stderr, flush=True)
        finally:
            for peer in peers:
                peer.close()
    return out


class Contention:
    """Per-worker completions and every wait for a connection, over a fixed time."""

    def __init__(self, workers: int) -> None:
        self.done = [0] * workers
        self.waits: list[float] = []

    def summary(self, seconds: float) -> dict[str, float]:
        waits = sorted(self.waits)
        return {
            "qps": sum(self.done) / seconds,
            "p50_ms": waits[len(waits) // 2] * 1e3,
            "p99_ms": waits[int(len(waits) * 0.99)] * 1e3,
            "max_ms": waits[-1] * 1e3,
            "jain": jain([float(d) for d in self.done]),
        }


def _borrow_sync(peer: SyncPeer) -> Callable[[], Any]:
    if isinstance(peer, SQLAlchemyPeer):
        return lambda: peer.pool.connect()
    return lambda: peer.pool.getconn()


def _return_sync(peer: SyncPeer, conn: Any) -> None:
    if isinstance(peer, SQLAlchemyPeer):
        conn.close()
    else:
        peer.pool.putconn(conn)


def contended_threads(peer: SyncPeer, workers: int, seconds: float) -> dict[str, float]:
    stats = Contention(workers)
    stop = time.perf_counter() + seconds
    lock = threading.Lock()
    borrow = _borrow_sync(peer)

    def work(i: int) -> None:
        waits: list[float] = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            conn = borrow()
            waits.append(time.perf_counter() - t0)
            try:
                conn.cursor().execute(SQL)
            finally:
                _return_sync(peer, conn)
            stats.done[i] += 1
        with lock:
            stats.waits.extend(waits)

    elapsed = _threads(workers, work)
    return stats.summary(elapsed)


async def contended_tasks(peer: AsyncPeer, workers: int, seconds: float) -> dict[str, float]:
    stats = Contention(workers)
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    asyncpg = peer.name.startswith("asyncpg")

    async def work(i: int) -> None:
        while loop.time() < stop:
            t0 = time.perf_counter()
            if asyncpg:
                conn = await peer.pool.acquire()
            else:
                conn = await peer.pool.getconn()
            stats.waits.append(time.perf_counter() - t0)
            try:
                if asyncpg:
                    await conn.fetchval(SQL)
                else:
                    await conn.execute(SQL)
            finally:
                if asyncpg:
                    await peer.pool.release(conn)
                else:
                    await peer.pool.putconn(conn)
            stats.done[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(workers)))
    return stats.summary(time.perf_counter() - t0)


def contention(
    dsn: str, rounds: int, seconds: float
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """shape -> library -> one summary per round."""
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    peers: list[SyncPeer] = [
        PsycopgStyle("poolwatch", poolwatch, dsn, 4, kwargs=AUTOCOMMIT),
        PsycopgStyle("psycopg_pool 3.3", psycopg_pool, dsn, 4, kwargs=AUTOCOMMIT),
        SQLAlchemyPeer(dsn, 4, autocommit=True),
    ]
    try:
        for workers in (16, 64):
            shape = f"{workers} threads, pool of 4"
            for _ in range(rounds):
                for peer in peers:
                    summary = contended_threads(peer, workers, seconds)
                    out.setdefault(shape, {}).setdefault(peer.name, []).append(summary)
            print(f"  contention: {shape} done", file=sys.stderr, flush=True)
    finally:
        for peer in peers:
            peer.close()
    loop = new_loop()
    apeers = loop.run_until_complete(async_peers(dsn, 4, kwargs=AUTOCOMMIT))
    try:
        shape = "64 asyncio tasks, pool of 4"
        for _ in range(rounds):
            for ap in apeers:
                summary = loop.run_until_complete(contended_tasks(ap, 64, seconds))
                out.setdefault(shape, {}).setdefault(ap.name, []).append(summary)
        print(f"  contention: {shape} done", file=sys.stderr, flush=True)
    finally:
        for ap in apeers:
            loop.run_until_complete(ap.close())
        loop.close()
    return out


def vs_raw_table(results: dict[int, dict[str, list[float]]]) -> str:
    lines = [
        "| threads = pool size | library | median qps | vs raw (median of per-round ratios)"
        " | spread (max/min) |",
        "|---:|---|---:|---:|---:|",
    ]
    for threads, by_lib in results.items():
        raw = by_lib["raw connections"]
        for lib, values in by_lib.items():
            ratios = [v / r for v, r in zip(values, raw)]
            lines.append(
                f"| {threads} | {lib} | {statistics.median(values):,.0f}"
                f" | {statistics.median(ratios):.3f} | {max(values) / min(values):.2f} |"
            )
    return "\n".join(lines)


def contention_table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [
        "| workers | library | qps | wait p50 (ms) | wait p99 (ms) | max wait (ms)"
        " | Jain fairness |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for shape, by_lib in results.items():
        for lib, runs in by_lib.items():

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            lines.append(
                f"| {shape} | {lib} | {med('qps'):,.0f} | {med('p50_ms'):.2f}"
                f" | {med('p99_ms'):.2f} | {med('max_ms'):.1f} | {med('jain'):.3f} |"
            )
    return "\n".join(lines)
