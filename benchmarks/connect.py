"""Connect-per-request against a pool: SELECT 1, on loopback and over added latency.

"Connect per request" opens a connection (TCP, startup, SCRAM authentication), runs
SELECT 1 and closes it, as code without a pool does. "Pooled" runs the same query on
a poolwatch pool. The second run goes through the tests' `FaultProxy` set to add 1 ms
each way (a 2 ms round trip, a same-region network), where every round trip of the
handshake is paid again for each request.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import poolwatch
from tests.faults.proxy import FaultProxy  # the fault tests' proxy, set to add latency

from .peers import PsycopgStyle
from .throughput import SQL, _threads

ONE_WAY_DELAY = 0.001


def per_request_qps(dsn: str, threads: int, ops: int) -> float:
    def work(i: int) -> None:
        for _ in range(ops):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SQL)

    return threads * ops / _threads(threads, work)


def pooled_qps(dsn: str, threads: int, ops: int) -> float:
    peer = PsycopgStyle("poolwatch", poolwatch, dsn, threads, kwargs={"autocommit": True})
    try:
        run = peer.run

        def work(i: int) -> None:
            for _ in range(ops):
                run(SQL)

        return threads * ops / _threads(threads, work)
    finally:
        peer.close()


def measure(dsn: str, rounds: int) -> dict[str, dict[int, dict[str, list[float]]]]:
    """network -> threads -> mode -> qps per round."""
    params: dict[str, Any] = conninfo_to_dict(dsn)
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    with FaultProxy(params["host"], int(params["port"])) as proxy:
        proxy.latency = ONE_WAY_DELAY
        slow_dsn = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        networks = {
            "loopback": (dsn, 150, 1500),
            f"loopback + {ONE_WAY_DELAY * 2e3:.0f} ms round trip": (slow_dsn, 40, 300),
        }
        for network, (target, connect_ops, pooled_ops) in networks.items():
            for threads in (1, 4):
                for _ in range(rounds):
                    row = out.setdefault(network, {}).setdefault(threads, {})
                    row.setdefault("connect per request", []).append(
                        per_request_qps(target, threads, max(5, connect_ops // threads))
                    )
                    row.setdefault("pooled", []).append(
                        pooled_qps(target, threads, max(20, pooled_ops // threads))
                    )
                print(f"  connect: {network}, {threads} threads", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, dict[int, dict[str, list[float]]]]) -> str:
    lines = [
        "| network | threads | connect per request (qps) | pooled (qps) | pooled / per request |",
        "|---|---:|---:|---:|---:|",
    ]
    for network, by_threads in results.items():
        for threads, modes in by_threads.items():
            per = modes["connect per request"]
            pooled = modes["pooled"]
            ratios = [p / c for p, c in zip(pooled, per)]
            lines.append(
                f"| {network} | {threads} | {statistics.median(per):,.0f}"
                f" | {statistics.median(pooled):,.0f} | {statistics.median(ratios):.1f}x |"
            )
    return "\n".join(lines)
