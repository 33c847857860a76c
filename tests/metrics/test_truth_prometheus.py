"""A real Prometheus scrapes a pool that runs psycopg_pool's recommended ``check`` callback.

For 60 s a light load borrows and returns connections while Prometheus scrapes every
second and evaluates the generated recording rules every second. Afterwards no
poolwatch counter (histogram buckets, counts and sums included) shows a single reset,
and every value of ``poolwatch:saturation:mean_ratio`` agrees within 5% with the
saturation the test measured itself from the times it held each connection.

A second pool, scraped by the same Prometheus, is the issue's reproduction: a 50 ms
check and a nearly idle pool, where a counter that lost the check's time between two
scrapes read as a reset and the rule as several hundred percent. Its counters must
show no reset either, and its rule must stay within the bounds the test measured.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool
from poolwatch.alerts import AlertSettings, render_rules
from poolwatch.embedded import free_port
from poolwatch.exporter import start_exporter

from ..alerts.stack import Process, prometheus_config, query
from .scrape import require_tool

pytestmark = [pytest.mark.db, pytest.mark.slow, pytest.mark.timeout(300)]

LOAD_SECONDS = 60.0
WINDOW = 30  # seconds: the rules' rate window, short enough for the load to fill twice
MAX_SIZE = 4
POOL = "resets"
SLOW_POOL = "resets-slow-check"
SLOW_CHECK = 0.05


class Load:
    """Threads that borrow a connection, hold it a random while, return it, rest.

    Each hold is recorded twice, in wall-clock time (Prometheus's clock): from just
    after getconn() returned to just before putconn() (surely used), and from just
    before getconn() to just after putconn() returned (at most used). The pool's
    own count lies between the two.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        threads: int,
        seed: int,
        hold: tuple[float, float] = (0.1, 0.3),
        rest: tuple[float, float] = (0.3, 0.9),
    ) -> None:
        self.pool = pool
        self.hold = hold
        self.rest = rest
        self.inner: list[tuple[float, float]] = []
        self.outer: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.stop_at = 0.0
        self.threads = [
            threading.Thread(target=self.run, args=(random.Random(seed + i),), daemon=True)
            for i in range(threads)
        ]

    def start(self, seconds: float) -> None:
        self.stop_at = time.monotonic() + seconds
        for t in self.threads:
            t.start()

    def join(self) -> None:
        deadline = self.stop_at + 30
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
            assert not t.is_alive(), "a load thread did not finish"

    def run(self, rng: random.Random) -> None:
        while time.monotonic() < self.stop_at:
            t0 = time.time()
            conn = self.pool.getconn(timeout=10)
            t1 = time.time()
            time.sleep(rng.uniform(*self.hold))
            t2 = time.time()
            self.pool.putconn(conn)
            t3 = time.time()
            with self.lock:
                self.inner.append((t1, t2))
                self.outer.append((t0, t3))
            time.sleep(rng.uniform(*self.rest))

    @staticmethod
    def _overlap(spans: list[tuple[float, float]], a: float, b: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for start, end in spans)

    def saturation(self, a: float, b: float) -> tuple[float, float]:
        """(surely, at most) mean saturation between wall-clock times *a* and *b*."""
        scale = (b - a) * MAX_SIZE
        return self._overlap(self.inner, a, b) / scale, self._overlap(self.outer, a, b) / scale


def range_samples(prom: str, promql: str, at: float) -> list[tuple[float, float]]:
    """The raw samples of a range-vector selector, evaluated at wall-clock time *at*."""
    import httpx

    r = httpx.get(prom + "/api/v1/query", params={"query": promql, "time": at}, timeout=10)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    assert len(result) == 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]]


@pytest.fixture
def prometheus(tmp_path, dsn):
    binary = require_tool("prometheus")

    def slow_check(conn):
        ConnectionPool.check_connection(conn)
        time.sleep(SLOW_CHECK)

    pools = [
        ConnectionPool(dsn, min_size=2, max_size=MAX_SIZE, name=POOL, open=True,
                       check=ConnectionPool.check_connection),
        ConnectionPool(dsn, min_size=1, max_size=MAX_SIZE, name=SLOW_POOL, open=True,
                       check=slow_check),
    ]  # fmt: skip
    for pool in pools:
        pool.wait()
    exporter = start_exporter(pools, port=0, registry=CollectorRegistry())
    rules = tmp_path / "poolwatch.rules.yml"
    rules.write_text(render_rules(AlertSettings(window=f"{WINDOW}s", interval="1s")))
    config = prometheus_config(rules, exporter.port, free_port())
    del config["alerting"]  # no Alertmanager needed: only the recording rules matter
    (tmp_path / "prom.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = Process(
        [binary, f"--config.file={tmp_path / 'prom.yml'}",
         f"--storage.tsdb.path={tmp_path / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        tmp_path / "prometheus.log",
    )  # fmt: skip
    try:
        prom.wait_http(f"http://127.0.0.1:{port}/-/ready")
        yield pools, f"http://127.0.0.1:{port}"
    finally:
        prom.stop()
        exporter.stop()
        for pool in pools:
            pool.close()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value


def counter_resets(prom: str, pool: str, span: int) -> tuple[int, list[object]]:
    """(counter series of *pool*, those with a reset) over the last *span* seconds."""
    selector = f'{{__name__=~"poolwatch_.+_(total|bucket|count|sum)", pool="{pool}"}}'
    names = sorted({r["metric"]["__name__"] for r in query(prom, selector)})
    assert len(names) >= 3 + 4 * 3, f"counter families missing: {names}"
    series = 0
    reset_series = []
    # resets() drops the metric name: one query per name, or _count and _sum would clash
    for name in names:
        for r in query(prom, f'resets({name}{{pool="{pool}"}}[{span}s])'):
            series += 1
            if float(r["value"][1]) != 0:
                reset_series.append((name, r["metric"], r["value"][1]))
    return series, reset_series


def rule_against_truth(prom: str, pool: str, load: Load, span: int, started: float, ended: float):
    """Each evaluation of the saturation rule within the load, with the truth it covers:
    (time, rule value, surely, at most), where the truth is taken over exactly the span
    between the first and last samples the rule's rate() saw (its slope)."""
    rule = f'poolwatch:saturation:mean_ratio{{pool="{pool}"}}'
    evaluations = range_samples(prom, f"{rule}[{span}s]", time.time())
    inside = [(t, v) for t, v in evaluations if started + WINDOW < t <= ended]
    assert len(inside) >= 15, f"too few evaluations within the load: {evaluations}"
    out = []
    for t, value in inside:
        samples = range_samples(
            prom, f'poolwatch_used_connection_seconds_total{{pool="{pool}"}}[{WINDOW}s]', t
        )
        out.append((t, value, *load.saturation(samples[0][0], samples[-1][0])))
    return out


def test_no_counter_resets_and_a_true_saturation_rule(prometheus):
    pools, prom = prometheus
    for name in (POOL, SLOW_POOL):
        wait_for(lambda n=name: query(prom, f'poolwatch_connections_max{{pool="{n}"}}'), 30, name)
    load = Load(pools[0], threads=3, seed=7)
    # nearly idle: one short hold about every second, each behind a 50 ms check
    idle_load = Load(pools[1], threads=1, seed=8, hold=(0.002, 0.01), rest=(0.5, 1.5))
    started = time.time()
    load.start(LOAD_SECONDS)
    idle_load.start(LOAD_SECONDS)
    load.join()
    idle_load.join()
    ended = time.time()
    time.sleep(3)  # the last scrapes and rule evaluations
    span = int(time.time() - started) + 10

    series, reset_series = counter_resets(prom, POOL, span)
    assert series > 50, f"too few counter series scraped: {series}"
    assert reset_series == [], reset_series
    slow_series, slow_resets = counter_resets(prom, SLOW_POOL, span)
    assert slow_resets == [], slow_resets

    worst = 0.0
    for t, value, surely, at_most in rule_against_truth(prom, POOL, load, span, started, ended):
        truth = (surely + at_most) / 2
        assert truth > 0.05, f"the load was not measurable: {truth}"
        error = abs(value - truth) / truth
        worst = max(worst, error)
        assert error <= 0.05, (
            f"at {t}: rule {value:.4f}, truth {truth:.4f} (between {surely:.4f} and"
            f" {at_most:.4f}), off by {error:.1%}"
        )
    # The slow check's time counts as used, so the truth lies between the holds alone
    # and the holds with their getconn (check included) and putconn.
    slow = rule_against_truth(prom, SLOW_POOL, idle_load, span, started, ended)
    for t, value, surely, at_most in slow:
        assert surely * 0.95 <= value <= at_most * 1.05, (t, value, surely, at_most)
    print(
        f"\n{series} + {slow_series} counter series, 0 resets; {len(slow)} evaluations of"
        f" the slow-check pool within bounds, peak {max(v for _, v, _, _ in slow):.2%};"
        f" {len(load.inner)} holds, worst rule error {worst:.2%}"
    )
