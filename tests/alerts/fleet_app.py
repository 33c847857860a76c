"""One app instance of the fleet test: pools under load, an exporter, its own figures.

    POOLWATCH_TEST_DSN=... python -m tests.alerts.fleet_app --port 8001 \
        --pool api=5:8 --pool jobs=2:3 --load-seconds 30 --report out.json

Each ``--pool NAME=MAX_SIZE:THREADS`` gets THREADS threads that take a connection, hold it
for --hold seconds and give it back, for --load-seconds: more threads than connections
make requests queue. When the load ends the instance writes what it measured itself
(waits counted by its own observer, the pool's used-seconds integral, max_size, the
server budget) to --report. The DSN comes from the environment, never the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.exporter import start_exporter
from poolwatch.observe import PoolObserver


class WaitCounter(PoolObserver):
    """Counts the requests that had to queue, as the instance sees them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued = 0

    def on_acquire(self, wait_seconds: float, outcome: str, queued: bool) -> None:
        if queued:
            with self.lock:
                self.queued += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", action="append", required=True, metavar="NAME=MAX:THREADS")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--hold", type=float, default=0.03)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--profile", choices=["full", "lean"], default="full")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    dsn = os.environ["POOLWATCH_TEST_DSN"]

    pools: dict[str, tuple[ConnectionPool, WaitCounter, int]] = {}
    for spec in args.pool:
        name, _, sizes = spec.partition("=")
        max_size, _, threads = sizes.partition(":")
        counter = WaitCounter()
        pool = ConnectionPool(
            dsn, min_size=1, max_size=int(max_size), name=name, observer=counter, timeout=30
        )
        pool.wait(timeout=30)
        pools[name] = (pool, counter, int(threads))
    exporter = start_exporter([p for p, _, _ in pools.values()], port=args.port,
                              registry=CollectorRegistry(), profile=args.profile)  # fmt: skip

    load_until = time.monotonic() + args.load_seconds

    def work(pool: ConnectionPool) -> None:
        while not stop.is_set() and time.monotonic() < load_until:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
                time.sleep(args.hold)

    def impatient(pool: ConnectionPool) -> None:
        # A caller that gives up at once when the pool is busy: timeouts for the panels.
        while not stop.is_set() and time.monotonic() < load_until:
            try:
                pool.putconn(pool.getconn(timeout=0.001))
            except PoolTimeout:
                pass
            time.sleep(0.5)

    threads = [
        threading.Thread(target=work, args=(pool,), daemon=True)
        for pool, _, n in pools.values()
        for _ in range(n)
    ] + [
        threading.Thread(target=impatient, args=(pool,), daemon=True)
        for pool, _, n in pools.values()
        if n
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not stop.is_set():
        report = {}
        for name, (pool, counter, _) in pools.items():
            pool.drain()  # closes by reason, for the lifetime panels
            deadline = time.monotonic() + 10
            while pool.snapshot().used and time.monotonic() < deadline:
                time.sleep(0.05)  # the last connections are on their way back
            snap = pool.snapshot()
            report[name] = {
                "waits": counter.queued,
                "used_seconds_total": snap.used_seconds_total,
                "max_size": snap.max_size,
                "server_max_connections": snap.server_max_connections,
            }
        tmp = args.report.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        tmp.replace(args.report)
    stop.wait()
    exporter.stop()
    for pool, _, _ in pools.values():
        pool.close()


if __name__ == "__main__":
    main()
