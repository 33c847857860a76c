"""Checkout cost with insight (issue 16) off and on, beside psycopg_pool.

Variants, interleaved within every round, pool of 1 with an idle connection always
available, no query:

- psycopg_pool 3.3, the baseline;
- poolwatch, insight off (the pool not watched);
- poolwatch + activity: the sampler thread reading the checked-out connections'
  transaction status every 10 ms (what every exported pool gets);
- poolwatch + activity + call sites: every checkout also attributed to its caller.

Run alone: ``python -m benchmarks.insight_cost [--quick]`` (starts a throwaway cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg_pool

import poolwatch
from poolwatch.insight.activity import unwatch, watch

from . import harness
from .peers import AsyncPsycopgStyle, PsycopgStyle

BASELINE = "psycopg_pool 3.3"
OFF = "poolwatch, insight off"
ACTIVITY = "poolwatch + activity sampling"
SITES = "poolwatch + activity + call sites"
#: SPEC goals for poolwatch, µs (the checkout benchmark's)
GOALS = {
    "sync getconn+putconn": 1.5,
    "sync connection()": 3.0,
    "async getconn+putconn": 2.5,
    "async connection()": 6.0,
}


def _time(fn: Callable[[], Any], ops: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / ops * 1e6


def _watch(variant: str, pool: Any) -> None:
    if variant == ACTIVITY:
        watch(pool)
    elif variant == SITES:
        watch(pool, call_sites=True)


def measure(dsn: str, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    """case -> variant -> µs per operation, one value per round."""
    results: dict[str, dict[str, list[float]]] = {}
    sync = [
        (BASELINE, PsycopgStyle(BASELINE, psycopg_pool, dsn, 1)),
        *((v, PsycopgStyle(v, poolwatch, dsn, 1)) for v in (OFF, ACTIVITY, SITES)),
    ]
    for variant, peer in sync:
        _watch(variant, peer.pool)
    loop = asyncio.new_event_loop()
    apeers = [
        (BASELINE, loop.run_until_complete(AsyncPsycopgStyle(BASELINE, psycopg_pool).open(dsn, 1)))
    ]
    for v in (OFF, ACTIVITY, SITES):
        ap = loop.run_until_complete(AsyncPsycopgStyle(v, poolwatch).open(dsn, 1))
        _watch(v, ap.pool)
        apeers.append((v, ap))
    try:
        for r in range(rounds):
            for variant, peer in sync:
                assert peer.ctx is not None
                for case, fn in (
                    ("sync getconn+putconn", peer.getput),
                    ("sync connection()", peer.ctx),
                ):
                    us = _time(lambda fn=fn: fn(ops), ops)
                    results.setdefault(case, {}).setdefault(variant, []).append(us)
            for variant, ap in apeers:
                for case, afn in (
                    ("async getconn+putconn", ap.getput),
                    ("async connection()", ap.ctx),
                ):
                    us = _time(lambda afn=afn: loop.run_until_complete(afn(ops)), ops)
                    results.setdefault(case, {}).setdefault(variant, []).append(us)
            print(f"  insight cost: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    finally:
        for variant, peer in sync:
            if variant != BASELINE:
                unwatch(peer.pool)
            peer.close()
        for variant, ap in apeers:
            if variant != BASELINE:
                unwatch(ap.pool)
            loop.run_until_complete(ap.close())
        loop.close()
    return results


def _in_round(values: list[float], against: list[float]) -> float:
    """The median of the per-round ratios: each round's variants ran side by side, so
    a ratio taken within a round cancels most of what the shared machine did to it."""
    return statistics.median(v / a for v, a in zip(values, against, strict=True))


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| case | variant | median µs | vs psycopg_pool | vs insight off"
        " | µs over insight off | spread (max/min) | goal |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case, by_variant in results.items():
        base = by_variant[BASELINE]
        off = by_variant[OFF]
        off_med = statistics.median(off)
        for variant, values in by_variant.items():
            med = statistics.median(values)
            # the extra cost in µs: the in-round ratio applied to insight off's median
            extra = (_in_round(values, off) - 1.0) * off_med
            goal = ""
            if variant != BASELINE:
                goal = f"≤ {GOALS[case]} µs: {'met' if med <= GOALS[case] else 'not met'}"
            lines.append(
                f"| {case} | {variant} | {med:.2f} | {_in_round(values, base):.2f}"
                f" | {_in_round(values, off):.2f} | {extra:+.2f} |"
                f" {max(values) / min(values):.2f} | {goal} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--dsn", help="use this server instead of a throwaway cluster")
    args = parser.parse_args()
    rounds, ops = (3, 5_000) if args.quick else (9, 20_000)
    with harness.server(args.dsn, max_connections=50) as dsn:
        print(table(measure(dsn, rounds, ops)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
