"""Checkout cost, side by side in one run: poolwatch against psycopg_pool.

Measures getconn()+putconn() and an empty `connection()` block, sync and async, with
an idle connection always available (the uncontended path every request takes). Each
case runs in rounds; the table gives the median per operation over the rounds and
the ratio to psycopg_pool measured in the same run.

    ./scripts/bench            # writes benchmarks/RESULTS.md and prints it
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg_pool

import poolwatch
from poolwatch.embedded import create_cluster

ROUNDS = 9
OPS = 20_000


def time_sync(fn: Callable[[], None], ops: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / ops * 1e6


def sync_cases(pool, ops: int) -> dict[str, Callable[[], None]]:
    def getput():
        getconn, putconn = pool.getconn, pool.putconn
        for _ in range(ops):
            putconn(getconn())

    def ctx():
        connection = pool.connection
        for _ in range(ops):
            with connection():
                pass

    return {"sync getconn+putconn": getput, "sync connection()": ctx}


def async_cases(pool, ops: int, loop) -> dict[str, Callable[[], None]]:
    async def getput():
        getconn, putconn = pool.getconn, pool.putconn
        for _ in range(ops):
            await putconn(await getconn())

    async def ctx():
        connection = pool.connection
        for _ in range(ops):
            async with connection():
                pass

    return {
        "async getconn+putconn": lambda: loop.run_until_complete(getput()),
        "async connection()": lambda: loop.run_until_complete(ctx()),
    }


def measure(dsn: str, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    libs = {"psycopg_pool 3.3": psycopg_pool, "poolwatch (aggregates on)": poolwatch}
    loop = asyncio.new_event_loop()
    pools = {}
    for label, mod in libs.items():
        sp = mod.ConnectionPool(dsn, min_size=1, max_size=1, open=True)
        sp.wait()

        async def open_async(mod=mod):
            ap = mod.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
            await ap.open(wait=True)
            return ap

        ap = loop.run_until_complete(open_async())
        pools[label] = (sp, ap)
    try:
        for r in range(rounds):
            # Interleave libraries within each round so that drift hits both alike.
            for label, (sp, ap) in pools.items():
                cases = {**sync_cases(sp, ops), **async_cases(ap, ops, loop)}
                for case, fn in cases.items():
                    results.setdefault(case, {}).setdefault(label, []).append(time_sync(fn, ops))
            print(f"bench: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for sp, ap in pools.values():
            sp.close()
            loop.run_until_complete(ap.close())
        loop.close()
    return results


GOALS = {
    "sync getconn+putconn": 1.5,
    "sync connection()": 3.0,
    "async getconn+putconn": 2.5,
    "async connection()": 6.0,
}


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| case | psycopg_pool 3.3 (µs) | poolwatch (µs) | poolwatch / psycopg_pool"
        " | goal (µs) | spread (max/min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, by_lib in results.items():
        base = statistics.median(by_lib["psycopg_pool 3.3"])
        ours = statistics.median(by_lib["poolwatch (aggregates on)"])
        runs = by_lib["poolwatch (aggregates on)"]
        lines.append(
            f"| {case} | {base:.2f} | {ours:.2f} | {ours / base:.2f} | {GOALS[case]:.1f}"
            f" | {max(runs) / min(runs):.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--ops", type=int, default=OPS, help="operations per round and case")
    parser.add_argument("--dsn", help="use this server instead of a throwaway cluster")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()

    cluster = None if args.dsn else create_cluster(max_connections=20)
    try:
        dsn = args.dsn or cluster.dsn()
        results = measure(dsn, args.rounds, args.ops)
    finally:
        if cluster is not None:
            cluster.destroy()
    body = table(results)
    text = (
        "# Benchmark results\n\n"
        f"Command: `./scripts/bench` (rounds={args.rounds}, ops per round={args.ops}).\n"
        f"Python {sys.version.split()[0]}, one idle connection always available, medians over"
        " rounds, both libraries interleaved in every round of the same run.\n\n"
        "## Checkout cost\n\n" + body + "\n"
    )
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
