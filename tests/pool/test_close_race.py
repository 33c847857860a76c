"""close() racing putconn on a pool with a ``reset`` callback leaves no server connection open.

The return used to be queued after the workers' stop signals, where nothing ran it. A
1 µs switch interval makes the threads interleave at almost every bytecode; the ground
truth is the server's count of the pools' backends.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import uuid

import pytest

from poolwatch import ConnectionPool

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROUNDS = int(os.environ.get("POOLWATCH_RACE_ROUNDS", "150"))


def test_close_racing_putconn_with_reset_leaves_nothing_open(pg):
    app = f"race-{uuid.uuid4().hex[:10]}"
    resets = 0
    rng = random.Random(13)

    def reset(conn):
        nonlocal resets
        resets += 1

    pools = []  # kept referenced: a dropped connection would be closed by its finaliser
    unaccounted = []
    old_interval = sys.getswitchinterval()
    try:
        for round_ in range(ROUNDS):
            pool = ConnectionPool(
                pg.dsn(application_name=app), min_size=2, num_workers=1, reset=reset, open=False
            )
            pools.append(pool)
            pool.open(wait=True, timeout=30)
            conns = [pool.getconn(), pool.getconn()]
            start = threading.Barrier(3)

            def give_back(conn, start=start, pool=pool):
                start.wait(timeout=10)
                pool.putconn(conn)

            threads = [threading.Thread(target=give_back, args=(c,)) for c in conns]
            for t in threads:
                t.start()
            sys.setswitchinterval(1e-6)
            try:
                start.wait(timeout=10)
                # The returning threads take some tens of µs to wake up: a random
                # delay (a bounded spin) makes close() land anywhere in their returns.
                spin_until = time.perf_counter() + rng.uniform(0, 400e-6)
                while time.perf_counter() < spin_until:
                    pass
                pool.close(timeout=10)
                for t in threads:
                    t.join(10)
            finally:
                sys.setswitchinterval(old_interval)
            assert not any(t.is_alive() for t in threads)
            s = pool.snapshot()
            a = pool.aggregates()
            if (s.size, s.used, a.opened - a.closed) != (0, 0, 0):
                unaccounted.append((round_, s.size, s.used, a.opened - a.closed))
        # What the server sees: every backend of every pool is gone (they take a
        # moment to exit after their client closes).
        deadline = time.monotonic() + 20
        while pg.backends(app) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (pg.backends(app), unaccounted) == (0, [])
    finally:
        sys.setswitchinterval(old_interval)
