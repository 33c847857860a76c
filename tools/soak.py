#!/usr/bin/env python3
"""Soak: a pool under random operations and faults, its invariants checked all along.

Worker threads borrow and return connections at random (clean, left in a
transaction, in an error state, closed, held a while) from a pool with a ``check``
callback, while a fault thread kills backends, drains, resizes, checks and now and
then restarts the server. Every half second the instant invariants are checked, and
that no counter went down; every few seconds the workers pause, the pool comes to
rest and the rest of the invariants are checked against the workers' own count of
requests. Bounded in time; exits 1 on any violation.

    python tools/soak.py                 # 60 s on a throwaway PostgreSQL
    python tools/soak.py --seconds 10    # what CI runs
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.embedded import Cluster, create_cluster
from tests.faults.invariants import (
    MonotonicWatch,
    at_rest,
    at_rest_violations,
    instant_violations,
)

APP = "poolwatch-soak"


class Soak:
    def __init__(self, cluster: Cluster, seconds: float, workers: int, seed: int) -> None:
        self.cluster = cluster
        self.deadline = time.monotonic() + seconds
        self.rng = random.Random(seed)
        self.pool = ConnectionPool(
            cluster.dsn(), min_size=2, max_size=4, timeout=0.5, reconnect_timeout=30,
            kwargs={"application_name": APP}, name="soak", open=True,
            check=ConnectionPool.check_connection,  # psycopg_pool's recommended set-up
        )  # fmt: skip
        self.pool.wait(timeout=30)
        self.workers = workers
        self.requests = [0] * workers
        self.ops = 0
        self.outcomes: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.violations: list[str] = []
        self.watch = MonotonicWatch()
        self.pause = threading.Event()
        self.paused = threading.Semaphore(0)
        self.lock = threading.Lock()

    def worker(self, i: int) -> None:
        rng = random.Random(self.rng.random())
        while time.monotonic() < self.deadline:
            if self.pause.is_set():
                self.paused.release()
                while self.pause.is_set():
                    time.sleep(0.005)
            self.requests[i] += 1
            try:
                conn = self.pool.getconn(timeout=rng.choice([0.05, 0.2, 0.5]))
            except PoolTimeout:
                self.count("timeout")
                continue
            how = rng.choice(["clean", "clean", "clean", "transaction", "error", "broken", "hold"])
            try:
                if how == "transaction":
                    conn.execute("SELECT 1")
                elif how == "error":
                    try:
                        conn.execute("SELECT 1/0")
                    except psycopg.errors.DivisionByZero:
                        pass
                elif how == "broken":
                    conn.close()
                elif how == "hold":
                    conn.execute("SELECT pg_sleep(0.005)")
                    conn.commit()
            except psycopg.OperationalError:
                how = "lost"  # its backend was killed, or the server restarted
            finally:
                self.pool.putconn(conn)
            self.count(how)

    def count(self, outcome: str) -> None:
        with self.lock:
            self.ops += 1
            self.outcomes[outcome] += 1

    def injector(self) -> None:
        last_restart = time.monotonic()
        while time.monotonic() < self.deadline - 1:
            time.sleep(self.rng.uniform(0.3, 1.0))
            fault = self.rng.choice(["kill", "kill", "drain", "resize", "check"])
            if time.monotonic() - last_restart > 8:
                fault, last_restart = "restart", time.monotonic()
            if fault == "kill":
                self.cluster.terminate_backends(APP)
            elif fault == "drain":
                self.pool.drain()
            elif fault == "resize":
                low = self.rng.randint(0, 2)
                self.pool.resize(low, low + self.rng.randint(1, 3))
            elif fault == "check":
                self.pool.check()
            elif fault == "restart":
                self.cluster.restart()
            self.faults[fault] += 1

    def checker(self) -> None:
        next_rest = time.monotonic() + 3
        while time.monotonic() < self.deadline:
            time.sleep(0.5)
            self.record(instant_violations(self.pool, []))
            seen = len(self.watch.violations)
            self.watch.read(self.pool, "soak")
            self.record(self.watch.violations[seen:])
            if time.monotonic() >= next_rest and time.monotonic() < self.deadline - 2:
                self.check_at_rest()
                next_rest = time.monotonic() + 3

    def check_at_rest(self) -> None:
        self.pause.set()
        for _ in range(self.workers):
            if not self.paused.acquire(timeout=10):
                self.record(["a worker did not pause within 10 s (a hung request?)"])
                break
        deadline = time.monotonic() + 15
        while not at_rest(self.pool) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.record(at_rest_violations(self.pool, [], sum(self.requests)))
        self.pause.clear()

    def record(self, found: list[str]) -> None:
        for v in found:
            print(f"soak: VIOLATION {v}", file=sys.stderr)
        self.violations.extend(found)

    def run(self) -> int:
        started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i,)) for i in range(self.workers)]
        threads += [threading.Thread(target=self.injector), threading.Thread(target=self.checker)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            left = max(0.0, self.deadline - time.monotonic())
            print(f"soak: {self.ops:,} operations, faults {dict(self.faults)},"
                  f" violations {len(self.violations)}, {left:.0f} s left", flush=True)  # fmt: skip
            if time.monotonic() > self.deadline + 60:
                self.record(["threads still running 60 s after the deadline"])
                break
        elapsed = time.monotonic() - started
        self.pool.close()
        agg = self.pool.aggregates()
        if agg.opened != agg.closed:
            self.record([f"after close: opened {agg.opened} != closed {agg.closed} (a leak)"])
        print(
            f"soak: {elapsed:.0f} s, {self.ops:,} operations ({self.ops / elapsed:,.0f}/s),"
            f" outcomes {dict(self.outcomes)}, faults injected {sum(self.faults.values())}"
            f" {dict(self.faults)}, invariant violations {len(self.violations)}"
        )
        return 1 if self.violations else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default: 60)")
    parser.add_argument("--workers", type=int, default=8, help="worker threads (default: 8)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be between 1 and 3600")
    # The pool logs every discarded connection; thousands of them would hide the figures.
    logging.basicConfig(level=logging.ERROR)
    print("soak: starting a throwaway PostgreSQL", flush=True)
    cluster = create_cluster(max_connections=40)
    try:
        return Soak(cluster, args.seconds, args.workers, args.seed).run()
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
