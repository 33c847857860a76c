"""A worker process for the multiprocess tests, run as a script (not collected by pytest).

    python -m tests.metrics.mp_worker work N         N checkouts on pool "mp", exit with it open
    python -m tests.metrics.mp_worker fork N M       N checkouts, fork; the child makes M
                                                     checkouts on a pool of its own and
                                                     exits normally (atexit runs)
    python -m tests.metrics.mp_worker preload N      a pool made and registered but not
                                                     opened, then fork; the child opens
                                                     it and makes N checkouts (--preload)
    python -m tests.metrics.mp_worker mpchild N W    a multiprocessing child (fork start
                                                     method, which ends with os._exit and
                                                     runs no atexit) makes N checkouts; with
                                                     W=parent the parent is linked first

PROMETHEUS_MULTIPROC_DIR names the directory and POOLWATCH_TEST_DSN the database;
POOLWATCH_TEST_LINGER the seconds a pool lives after its work (default 1.5).
Every pool is registered with prometheus_client's default registry, as an app does.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from poolwatch import ConnectionPool
from poolwatch.metrics import register
from poolwatch.metrics.prometheus import collector_for


def checkouts(name: str, n: int) -> ConnectionPool:
    dsn = os.environ["POOLWATCH_TEST_DSN"]
    pool = ConnectionPool(dsn, min_size=1, max_size=2, name=name, open=True)
    register(pool)
    pool.wait()
    for _ in range(n):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    # Live past one periodic write (WRITE_INTERVAL), as a worker serving requests does.
    time.sleep(float(os.environ.get("POOLWATCH_TEST_LINGER", "1.5")))
    return pool


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "work":
        # The pool stays open: the process exits with it, as a worker's does.
        checkouts("mp", int(argv[1]))
        return 0
    if mode == "fork":
        parent_pool = checkouts("mp", int(argv[1]))
        child = os.fork()
        if child == 0:
            # Normal interpreter exit in the child: atexit handlers inherited from the
            # parent run here, as they do in a gunicorn or multiprocessing worker.
            if int(argv[2]):
                checkouts("mp", int(argv[2]))
            sys.exit(0)
        _, status = os.waitpid(child, 0)
        assert not parent_pool.closed  # the parent exits with its pool open
        return os.waitstatus_to_exitcode(status)
    if mode == "preload":
        pool = ConnectionPool(
            os.environ["POOLWATCH_TEST_DSN"], min_size=1, max_size=2, name="mp", open=False
        )
        register(pool)
        time.sleep(1.2)  # the writer thread runs in the parent before the fork
        child = os.fork()
        if child == 0:
            pool.open(wait=True)
            for _ in range(int(argv[1])):
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            sys.exit(0)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    if mode == "mpchild":
        # Celery's prefork pool and multiprocessing.Pool workers end the same way.
        if argv[2] == "parent":  # the link exists before the fork, as in an app's master
            collector_for()
        child = multiprocessing.get_context("fork").Process(target=mp_child, args=(int(argv[1]),))
        child.start()
        child.join(timeout=120)
        return 0 if child.exitcode == 0 else 1
    raise SystemExit(f"unknown mode {mode!r}")


def mp_child(n: int) -> None:
    pool = ConnectionPool(os.environ["POOLWATCH_TEST_DSN"], min_size=1, name="mp", open=True)
    register(pool)
    for _ in range(n):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    # returns at once: the periodic writer has not run since the last checkout


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
