"""Workloads for the sizing proof: real threads, a real pool, real PostgreSQL holds.

Requests arrive open-loop (a seeded schedule of Poisson arrivals, alone or in bursts),
so the arrivals do not depend on the pool's size, as in a service whose callers do not
wait for each other. Each request takes a connection, runs `pg_sleep` and, for the
held-idle shape, then sleeps in Python inside the open transaction, as code does that
calls another service while holding its connection.

`run` measures the ground truth itself: each request's wait for `getconn()` and the
time it held its connection; the pool's own counters feed the prediction only.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from poolwatch import ConnectionPool
from poolwatch.exporter.live import LiveHistory
from poolwatch.insight.advice import Options, advise
from poolwatch.insight.model import Prediction
from poolwatch.insight.window import Window, from_samples
from poolwatch.metrics.state import state_of

#: the live sampler's interval in these runs: short runs need finer burstiness samples
SAMPLE_SECONDS = 0.25


@dataclass(frozen=True)
class Shape:
    name: str
    #: requests per second
    rate: float
    #: requests arriving together
    burst: int
    #: seconds in pg_sleep, then seconds idle in the transaction
    query: float
    idle: float = 0.0


SHAPES = (
    Shape("steady", rate=60.0, burst=1, query=0.04),
    Shape("bursty", rate=60.0, burst=4, query=0.03),
    Shape("held-idle", rate=50.0, burst=1, query=0.01, idle=0.03),
)


@dataclass
class Measured:
    size: int
    seconds: float
    waits: list[float]
    holds: list[float]
    window: Window

    @property
    def wait_p95(self) -> float:
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, max(0, int(0.95 * len(ordered) + 0.5) - 1))]

    @property
    def saturation(self) -> float:
        return sum(self.holds) / (self.size * self.seconds)


def _schedule(shape: Shape, seconds: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    times: list[float] = []
    now = rng.expovariate(shape.rate / shape.burst)
    while now < seconds:
        times.extend([now] * shape.burst)
        now += rng.expovariate(shape.rate / shape.burst)
    return times


def run(dsn: str, shape: Shape, size: int, seconds: float, seed: int = 1) -> Measured:
    """Drive *shape* for *seconds* against a pool of *size*; bounded by the schedule."""
    pool = ConnectionPool(
        dsn, min_size=size, max_size=size, timeout=20, name=f"sizing-{size}", open=True
    )
    waits: list[float] = []
    holds: list[float] = []
    lock = threading.Lock()

    def request() -> None:
        asked = time.monotonic()
        conn = pool.getconn()
        got = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(%s)", (shape.query,))
            if shape.idle:
                time.sleep(shape.idle)  # the "external call", inside the transaction
            conn.rollback()
        finally:
            pool.putconn(conn)
            done = time.monotonic()
        with lock:
            waits.append(got - asked)
            holds.append(done - got)

    try:
        pool.wait(timeout=30)
        history = LiveHistory(lambda: [state_of(pool)], interval=SAMPLE_SECONDS)
        history.ensure_started()
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as workers:
            for at in _schedule(shape, seconds, seed):
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                workers.submit(request)
            # the window ends when the last request was made: the model's arrivals do too
            elapsed = time.monotonic() - start
        history.stop()
        window = from_samples(
            list(history.samples), state_of(pool), time.monotonic(), window_seconds=seconds + 60
        )
    finally:
        pool.close()
    return Measured(size, elapsed, waits, holds, window)


def predicted(measured: Measured, size: int) -> Prediction:
    """What the advice predicts at *size* from the pool's own counters in *measured*."""
    by_size = {p.size: p for p in advise(measured.window, Options(timeout=20)).predictions}
    return by_size[size]
