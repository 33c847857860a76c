"""What exporting costs: SELECT 1 throughput with metrics off and on, and /metrics rendering.

1. SELECT 1 throughput, T threads on a pool of T (T = 1 and 4), short rounds with
   the variants interleaved in every round:
   - "off": the pool is registered with no exporter (its aggregates, which cannot
     be turned off, are kept as always);
   - "prometheus": registered, and a scraper thread renders /metrics every second
     (15 times Prometheus' default scrape rate);
   - "prometheus + otel": the same, plus the OpenTelemetry bridge collected as often
     by the SDK's in-memory reader.
2. Rendering /metrics for 1, 10 and 100 pools, each with some history (checkouts,
   a close): poolwatch's direct renderer against prometheus_client's generic
   exposition of the same families.

Part of `./scripts/bench` (benchmarks/run.py).
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest

from poolwatch import ConnectionPool
from poolwatch.exporter.app import Exporter
from poolwatch.metrics.prometheus import families
from poolwatch.metrics.state import state_of

from .throughput import _threads

#: (threads = max_size, SELECT 1 per thread per round). One thread is the goal's case:
#: with 4 threads on 2 cores the scheduler alone moves a round by a factor of 2-3.
SHAPES = ((1, 8000), (4, 3000))
ROUNDS = 21
#: seconds between two scrapes in the "on" variants: 15 times Prometheus' default rate
SCRAPE_EVERY = 1.0
RENDER_REPEATS = 15


class Scraper:
    """Renders /metrics (and collects OTel) every SCRAPE_EVERY seconds while a round runs."""

    def __init__(self, exporter: Exporter | None, otel_reader: object | None) -> None:
        self.exporter = exporter
        self.otel_reader = otel_reader
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.scrapes = 0

    def run(self) -> None:
        while not self.stop.wait(SCRAPE_EVERY):
            if self.exporter is not None:
                self.exporter.metrics_text(openmetrics=False)
            if self.otel_reader is not None:
                self.otel_reader.get_metrics_data()  # type: ignore[attr-defined]
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def select_round(pool: ConnectionPool, threads: int, ops: int) -> float:
    """SELECT 1 per second over *threads* threads, *ops* each."""

    def work(i: int) -> None:
        connection = pool.connection
        for _ in range(ops):
            with connection() as conn:
                conn.execute("SELECT 1")

    return threads * ops / _threads(threads, work)


def throughput(dsn: str, rounds: int, threads: int, ops: int) -> dict[str, list[float]]:
    """qps per round for each variant; rounds are short and interleaved so that the
    machine's drift hits every variant alike, and ratios are taken within a round."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from poolwatch.metrics.otel import OTelBridge

    results: dict[str, list[float]] = {"off": [], "prometheus": [], "prometheus + otel": []}
    with ConnectionPool(
        dsn, min_size=threads, max_size=threads, open=True, name="bench",
        kwargs={"autocommit": True},  # one round trip per SELECT 1, as in the other sections
    ) as pool:  # fmt: skip
        pool.wait()
        select_round(pool, threads, ops)  # warm up
        exporter = Exporter([pool], registry=CollectorRegistry(), include_registry=False)
        reader = InMemoryMetricReader()
        OTelBridge([pool], meter_provider=MeterProvider(metric_readers=[reader]))
        for r in range(rounds):
            for label in results:
                on = label != "off"
                with Scraper(exporter if on else None, reader if "otel" in label else None):
                    results[label].append(select_round(pool, threads, ops))
            if (r + 1) % 10 == 0 or r + 1 == rounds:
                print(f"  {threads} threads: round {r + 1}/{rounds} done", file=sys.stderr)
    return results


def render_costs(dsn: str, counts: tuple[int, ...]) -> dict[int, tuple[float, float, int]]:
    """pools -> (poolwatch ms, prometheus_client ms, lines), medians over repeats."""
    out: dict[int, tuple[float, float, int]] = {}
    pools = []
    try:
        for i in range(max(counts)):
            pool = ConnectionPool(dsn, min_size=0, max_size=1, open=True, name=f"svc-{i:03d}")
            for _ in range(3):
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            pool.drain()  # one close with a reason, and no connection left open
            pools.append(pool)
        for n in counts:
            exporter = Exporter(pools[:n], registry=CollectorRegistry(), include_registry=False)
            fast, slow = [], []
            for _ in range(RENDER_REPEATS):
                t0 = time.perf_counter()
                text = exporter.metrics_text(openmetrics=False)
                fast.append((time.perf_counter() - t0) * 1e3)

                t0 = time.perf_counter()
                registry = CollectorRegistry()
                states = [state_of(p) for p in pools[:n]]

                class Fixed:
                    def collect(self, states=states):
                        return families(states)

                registry.register(Fixed())
                generate_latest(registry)
                slow.append((time.perf_counter() - t0) * 1e3)
            out[n] = (statistics.median(fast), statistics.median(slow), text.count("\n"))
            print(f"  rendered {n} pools", file=sys.stderr)
    finally:
        for pool in pools:
            pool.close()
    return out


def onoff_table(tps: dict[tuple[int, int], dict[str, list[float]]]) -> str:
    lines = [
        "| threads | SELECT 1 per round | variant | median qps | median ratio to off"
        " | middle half of ratios |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for (threads, ops), tp in tps.items():
        for label, values in tp.items():
            ratios = sorted(v / off for v, off in zip(values, tp["off"]))
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            lines.append(
                f"| {threads} | {threads * ops} | {label} | {statistics.median(values):,.0f}"
                f" | {statistics.median(ratios):.3f} | {q1:.3f} to {q3:.3f} |"
            )
    return "\n".join(lines)


def render_table(render: dict[int, tuple[float, float, int]]) -> str:
    lines = [
        "| pools | lines | poolwatch (ms) | prometheus_client (ms) | ratio | goal |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for n, (fast, slow, nlines) in render.items():
        goal = "≤ 20 ms" if n == 100 else ""
        lines.append(f"| {n} | {nlines:,} | {fast:.2f} | {slow:.2f} | {fast / slow:.2f} | {goal} |")
    return "\n".join(lines)
