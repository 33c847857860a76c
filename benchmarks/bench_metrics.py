"""What exporting costs: SELECT 1 throughput with metrics off and on, and /metrics rendering.

1. SELECT 1 throughput, T threads on a pool of T (T = 1 and 4), short rounds with
   the variants interleaved in every round:
   - "off": the pool is registered with no exporter (its aggregates, which cannot
     be turned off, are kept as always);
   - "prometheus": registered, and a scraper thread renders /metrics every 0.1 s
     (150 times Prometheus' default scrape rate);
   - "prometheus + otel": the same, plus the OpenTelemetry bridge collected as often
     by the SDK's in-memory reader.
2. Rendering /metrics for 1, 10 and 100 pools, each with some history (checkouts,
   a close): poolwatch's direct renderer against prometheus_client's generic
   exposition of the same families.

    ./scripts/bench                       # runs every benchmark, writes the results
    python benchmarks/bench_metrics.py    # only this one
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from poolwatch import ConnectionPool
from poolwatch.embedded import create_cluster
from poolwatch.exporter.app import Exporter
from poolwatch.metrics.prometheus import families
from poolwatch.metrics.state import state_of

#: (threads = max_size, SELECT 1 per thread per round). One thread is the goal's case:
#: with 4 threads on 2 cores the scheduler alone moves a round by a factor of 2-3.
SHAPES = ((1, 2000), (4, 500))
ROUNDS = 21
#: seconds between two scrapes in the "on" variants: 150 times Prometheus' default rate,
#: so that a short round still contains several scrapes
SCRAPE_EVERY = 0.1
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
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        connection = pool.connection
        for _ in range(ops):
            with connection() as conn:
                conn.execute("SELECT 1")

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in workers:
        t.join()
    return threads * ops / (time.perf_counter() - t0)


def throughput(dsn: str, rounds: int, threads: int, ops: int) -> dict[str, list[float]]:
    """qps per round for each variant; rounds are short and interleaved so that the
    machine's drift hits every variant alike, and ratios are taken within a round."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from poolwatch.metrics.otel import OTelBridge

    results: dict[str, list[float]] = {"off": [], "prometheus": [], "prometheus + otel": []}
    with ConnectionPool(dsn, min_size=threads, max_size=threads, open=True, name="bench") as pool:
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


def report(
    tps: dict[tuple[int, int], dict[str, list[float]]],
    render: dict[int, tuple[float, float, int]],
) -> str:
    lines = [
        "## Metrics on against metrics off (SELECT 1 throughput)",
        "",
        "T threads on a pool of T; the variants interleaved within every round;"
        f" 'on' renders /metrics every {SCRAPE_EVERY} s. Ratios are taken within a round;"
        " the middle half of them says how noisy the machine was.",
        "",
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
    lines += [
        "",
        "Goal: on within 3% of off. The pool's own aggregates are always kept (they are"
        " how it measures itself); what 'on' adds is exporting them.",
        "",
        "## Rendering /metrics",
        "",
        "Every family for N pools with history; median of"
        f" {RENDER_REPEATS} renders. prometheus_client renders the same families through"
        " its generic exposition.",
        "",
        "| pools | lines | poolwatch (ms) | prometheus_client (ms) | ratio | goal |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for n, (fast, slow, nlines) in render.items():
        goal = "≤ 20 ms" if n == 100 else ""
        lines.append(f"| {n} | {nlines:,} | {fast:.2f} | {slow:.2f} | {fast / slow:.2f} | {goal} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-metrics.md"))
    parser.add_argument("--dsn", help="use this database instead of a throwaway cluster")
    args = parser.parse_args()
    cluster = None
    if args.dsn is None:
        print("starting a throwaway PostgreSQL cluster", file=sys.stderr)
        cluster = create_cluster(max_connections=150)
    dsn = args.dsn or cluster.dsn()  # type: ignore[union-attr]
    try:
        tps = {shape: throughput(dsn, args.rounds, *shape) for shape in SHAPES}
        render = render_costs(dsn, (1, 10, 100))
    finally:
        if cluster is not None:
            cluster.destroy()
    text = "# Metrics benchmark results\n\nCommand: `./scripts/bench`.\n"
    text += f"Python {sys.version.split()[0]}.\n\n" + report(tps, render)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
