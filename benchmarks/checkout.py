"""Checkout microbenchmarks: take and return an idle connection, no query.

One idle connection always available (pool size 1), each case timed in rounds with
every library interleaved within a round; the table gives medians over rounds and
the ratio to psycopg_pool measured in the same rounds.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg_pool

from . import before
from .peers import (
    AsyncPsycopgStyle,
    Psycopg2Peer,
    PsycopgStyle,
    SQLAlchemyPeer,
    async_peers,
    new_loop,
    poolwatch_variants,
)

GOALS = {  # SPEC, µs, all metrics on
    "sync getconn+putconn": 1.5,
    "sync connection()": 3.0,
    "async getconn+putconn": 2.5,
    "async connection()": 6.0,
}
BASELINE = "psycopg_pool 3.3"


def _time(fn: Callable[[], Any], ops: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / ops * 1e6


def measure(dsn: str, rounds: int, ops: int) -> dict[str, dict[str, list[float]]]:
    """case -> library -> µs per operation, one value per round."""
    results: dict[str, dict[str, list[float]]] = {}
    variants = poolwatch_variants(dsn, 1)
    old = before.load()
    sync = [
        *variants,
        *([(PsycopgStyle(before.NAME, old, dsn, 1), lambda: None)] if old else []),
        (PsycopgStyle(BASELINE, psycopg_pool, dsn, 1), lambda: None),
        (Psycopg2Peer(dsn, 1), lambda: None),
        (SQLAlchemyPeer(dsn, 1), lambda: None),
    ]
    loop = new_loop()
    apeers = loop.run_until_complete(async_peers(dsn, 1))
    if old is not None:
        apeers.insert(1, loop.run_until_complete(AsyncPsycopgStyle(before.NAME, old).open(dsn, 1)))
    try:
        for r in range(rounds):
            for peer, scrape in sync:
                scrape()  # an exporter reading the pool between rounds, as a scrape would
                cases = {"sync getconn+putconn": peer.getput, "sync connection()": peer.ctx}
                for case, fn in cases.items():
                    if fn is not None:
                        us = _time(lambda fn=fn: fn(ops), ops)
                        results.setdefault(case, {}).setdefault(peer.name, []).append(us)
            for ap in apeers:
                for case, afn in (
                    ("async getconn+putconn", ap.getput),
                    ("async connection()", ap.ctx),
                ):
                    us = _time(lambda afn=afn: loop.run_until_complete(afn(ops)), ops)
                    results.setdefault(case, {}).setdefault(ap.name, []).append(us)
            print(f"  checkout: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    finally:
        for peer, _ in sync:
            peer.close()
        for ap in apeers:
            loop.run_until_complete(ap.close())
        loop.close()
    return results


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| case | library | median µs | vs psycopg_pool | spread (max/min) | goal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for case, by_lib in results.items():
        base = statistics.median(by_lib[BASELINE])
        for lib, values in by_lib.items():
            med = statistics.median(values)
            goal = ""
            judged = lib.startswith("poolwatch + Prometheus + OTel") or (
                lib == "poolwatch" and case.startswith("async")
            )
            if judged:
                ok = "met" if med <= GOALS[case] else "not met"
                goal = f"≤ {GOALS[case]} µs: {ok}"
            lines.append(
                f"| {case} | {lib} | {med:.2f} | {med / base:.2f}"
                f" | {max(values) / min(values):.2f} | {goal} |"
            )
    return "\n".join(lines)
