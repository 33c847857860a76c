"""The verdict rule against real pool situations: real pools, real PostgreSQL, real waits.

Each test drives a pool into one situation, reads its state before and after (as the
exporter's sampler does) and checks that the rule names that situation. Phases are
bounded in time; the assertions are on causes and counts, never on durations.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.insight.verdict import judge
from poolwatch.insight.window import between
from poolwatch.metrics.state import PoolState, state_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def drive(threads: int, seconds: float, work: Callable[[], None]) -> None:
    """*threads* threads each running *work* in a loop for *seconds* (errors count as work)."""
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            try:
                work()
            except PoolTimeout:
                pass

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)


def query(pool: ConnectionPool, seconds: float, think: float = 0.0) -> Callable[[], None]:
    def work() -> None:
        with pool.connection(timeout=5) as conn:
            conn.execute("SELECT pg_sleep(%s)", (seconds,))
        time.sleep(think)  # the caller's own work between two requests

    return work


def phase(
    pool: ConnectionPool, threads: int, seconds: float, work: Callable[[], None]
) -> tuple[PoolState, PoolState, float]:
    before, start = state_of(pool), time.monotonic()
    drive(threads, seconds, work)
    return before, state_of(pool), time.monotonic() - start


def test_nothing_waits_is_none(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=4, max_size=4, name="v-none") as pool:
        pool.wait()
        before, after, seconds = phase(pool, 2, 1.0, query(pool, 0.01))
    verdict = judge(between(before, after, seconds))
    assert after.scalars[("waits", ())] == 0
    assert verdict.cause == "none", verdict


def test_steady_load_beyond_the_pool_is_too_small(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=2, max_size=2, name="v-small") as pool:
        pool.wait()
        before, after, seconds = phase(pool, 6, 1.5, query(pool, 0.03))
    window = between(before, after, seconds)
    assert window.waits > 0
    verdict = judge(window)
    assert verdict.cause == "too_small", verdict
    assert f"{window.waits:.0f} requests waited" in verdict.why


def test_queries_turning_slow_is_slow_queries(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=3, max_size=3, name="v-slow") as pool:
        pool.wait()
        # the same five callers throughout; only each query's duration changes
        base_before, _, base_seconds = phase(pool, 5, 1.5, query(pool, 0.005, think=0.05))
        before, after, seconds = phase(pool, 5, 1.5, query(pool, 0.08, think=0.05))
    window = between(before, after, seconds, baseline=(base_before, base_seconds), min_baseline=1)
    assert window.waits > 0
    assert window.baseline is not None
    assert window.recent.holds.mean > 2 * window.baseline.holds.mean
    verdict = judge(window)
    assert verdict.cause == "slow_queries", verdict


def test_more_callers_at_the_same_hold_time_is_a_traffic_spike(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=2, max_size=2, name="v-spike") as pool:
        pool.wait()
        # one caller that pauses between requests, then eight that do not
        base_before, _, base_seconds = phase(pool, 1, 1.5, query(pool, 0.02, think=0.03))
        before, after, seconds = phase(pool, 8, 1.5, query(pool, 0.02))
    window = between(before, after, seconds, baseline=(base_before, base_seconds), min_baseline=1)
    assert window.waits > 0
    verdict = judge(window)
    assert verdict.cause == "traffic_spike", verdict


def test_transactions_held_across_a_sleep_are_held_idle(dsn: str) -> None:
    """1 part query, 4 parts idle in transaction; the split is what this test timed."""
    split = {"query": 0.0, "idle_in_transaction": 0.0, "idle": 0.0}
    lock = threading.Lock()
    with ConnectionPool(dsn, min_size=2, max_size=2, name="v-held") as pool:
        pool.wait()

        def work() -> None:
            with pool.connection(timeout=5) as conn:
                t0 = time.monotonic()
                conn.execute("SELECT pg_sleep(0.02)")
                t1 = time.monotonic()
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                time.sleep(0.08)  # the slow call to another service, transaction open
                t2 = time.monotonic()
            with lock:
                split["query"] += t1 - t0
                split["idle_in_transaction"] += t2 - t1

        before, after, seconds = phase(pool, 5, 1.5, work)
    window = between(before, after, seconds)
    assert window.waits > 0
    if window.activity is None:
        # Without a measured split the rule cannot know, and must not guess held_idle.
        assert judge(window).cause == "too_small"
    else:
        # the pool's own split (the insight sampler, when built in) must see it too
        assert judge(window).cause == "held_idle", window.activity
    verdict = judge(dataclasses.replace(window, activity=split))
    assert verdict.cause == "held_idle", verdict
    share = split["idle_in_transaction"] / (split["query"] + split["idle_in_transaction"])
    assert f"{share:.0%} idle in a transaction" in verdict.why


def test_a_connection_never_given_back_is_a_leak(dsn: str) -> None:
    with ConnectionPool(dsn, min_size=2, max_size=2, name="v-leak", leak_timeout=0.3) as pool:
        pool.wait()
        kept = pool.getconn()  # never returned during the phase
        before, after, seconds = phase(pool, 3, 1.5, query(pool, 0.03))
        pool.putconn(kept)
    window = between(before, after, seconds)
    assert window.leaked_now == 1 and window.waits > 0
    verdict = judge(window)
    assert verdict.cause == "leak", verdict


def test_a_server_refusing_connections_is_server_refusing(dsn: str) -> None:
    """A role limited to one connection: the pool's second connection is refused (53300)."""
    role = f"pw_limited_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1 PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(password)
            )
        )
    limited = make_conninfo(dsn, user=role, password=password)
    assert conninfo_to_dict(limited)["user"] == role
    try:
        with ConnectionPool(
            limited, min_size=1, max_size=3, name="v-refused", reconnect_timeout=30
        ) as pool:
            pool.wait()
            before, after, seconds = phase(pool, 4, 1.5, query(pool, 0.05))
        window = between(before, after, seconds)
        assert window.waits > 0
        assert window.connect_errors.get("53", 0) > 0, window.connect_errors
        verdict = judge(window)
        assert verdict.cause == "server_refusing", verdict
        assert "of class 53" in verdict.why
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def test_the_runbook_describes_the_same_rule() -> None:
    """docs/runbooks.md's table lists the causes in the rule's order, with its thresholds."""
    from pathlib import Path

    from poolwatch.insight import verdict as rule

    text = (Path(__file__).resolve().parents[2] / "docs" / "runbooks.md").read_text()
    table = text[text.index("| verdict (`cause`)") :].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    in_table = [row.split("`")[1] for row in rows]
    in_code = re.findall(r"^\d\. ``(\w+)``", rule.__doc__ or "", re.MULTILINE)
    assert in_table == in_code
    assert sorted(in_table) == sorted(rule.CAUSES)
    assert rule.IDLE_SHARE == 0.5 and "more than half" in rows[in_table.index("held_idle")]
    assert rule.CHANGE_FACTOR == 2 and "at least 2" in rows[in_table.index("slow_queries")]
    assert "verdict.py" in text
