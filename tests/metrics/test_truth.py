# GENERATED from test_truth_async.py by tools/unasync.py. DO NOT EDIT.
"""The scraped metrics equal what the test itself caused and measured (sync twin: test_truth.py).

Every test drives a real pool against the real PostgreSQL, keeps its own ground
truth (acquisitions made, waits forced and timed, backends killed, time held) and
compares it with /metrics scraped over HTTP from a running exporter.
"""

from __future__ import annotations

from time import monotonic

import psycopg
import pytest

from poolwatch import ConnectionPool, PoolTimeout

from ..acompat import gather, sleep, spawn
from .scrape import exporter, scrape

pytestmark = pytest.mark.db


def test_every_acquisition_is_counted(dsn):
    n = 37
    with ConnectionPool(dsn, min_size=2, name="truth-acquire") as pool:
        pool.wait()
        with exporter([pool]) as srv:
            for _ in range(n):
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            s = scrape(srv.url)
    labels = {"pool": "truth-acquire"}
    assert s.value("poolwatch_acquire_seconds_count", outcome="ok", **labels) == n
    assert s.value("poolwatch_use_seconds_count", **labels) == n
    assert s.value("poolwatch_waits_total", **labels) == 0
    assert s.value("poolwatch_connect_seconds_count", outcome="ok", **labels) == 2
    assert s.value("poolwatch_connections", state="idle", **labels) == 2
    assert s.value("poolwatch_connections_max", **labels) == 2


def test_forced_waits_show_in_waits_total_and_the_wait_histogram(dsn):
    hold, waiters = 0.15, 3
    measured: list[float] = []

    with ConnectionPool(dsn, min_size=1, max_size=1, name="truth-waits") as pool:
        pool.wait()
        with exporter([pool]) as srv:
            held = pool.getconn()

            def wait_for_one():
                t0 = monotonic()
                with pool.connection():
                    measured.append(monotonic() - t0)

            tasks = [spawn(wait_for_one) for _ in range(waiters)]
            sleep(hold)
            pool.putconn(held)
            gather(*tasks)
            s = scrape(srv.url)

    labels = {"pool": "truth-waits", "outcome": "ok"}
    assert len(measured) == waiters and min(measured) > 0
    assert s.value("poolwatch_waits_total", pool="truth-waits") == waiters
    total = waiters + 1  # the holder's own acquisition did not wait
    assert s.value("poolwatch_acquire_seconds_count", **labels) == total
    # Bucket by bucket, the histogram holds what the test measured itself (the holder
    # in the first bucket). The pool times each wait from inside the test's window, a
    # little shorter; bounds within 5 ms of a measured wait are left out.
    for le in ("0.00005", "0.001", "0.01", "0.05", "0.1", "0.25", "0.5", "1.0"):
        if all(abs(w - float(le)) > 0.005 for w in measured):
            expected = 1 + sum(w <= float(le) for w in measured)
            assert s.bucket("poolwatch_acquire_seconds", repr(float(le)), **labels) == expected
    pool_sum = s.value("poolwatch_acquire_seconds_sum", **labels)
    assert sum(measured) - 0.02 * waiters <= pool_sum <= sum(measured)


def test_a_timeout_is_an_outcome_and_an_error(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="truth-timeout") as pool:
        pool.wait()
        with exporter([pool]) as srv:
            held = pool.getconn()
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.1)
            pool.putconn(held)
            s = scrape(srv.url)
    labels = {"pool": "truth-timeout"}
    assert s.value("poolwatch_acquire_seconds_count", outcome="timeout", **labels) == 1
    assert s.value("poolwatch_errors_total", kind="timeout", **labels) == 1
    assert s.value("poolwatch_waits_total", **labels) == 1
    # It gave up after its 0.1 s timeout: above the 0.05 s bound, within 0.25 s.
    assert s.bucket("poolwatch_acquire_seconds", "0.05", outcome="timeout", **labels) == 0
    assert s.bucket("poolwatch_acquire_seconds", "0.25", outcome="timeout", **labels) == 1


def test_an_expired_connection_closes_with_reason_max_lifetime(dsn):
    with ConnectionPool(
        dsn, min_size=1, max_size=1, max_lifetime=0.3, name="truth-lifetime"
    ) as pool:
        pool.wait()
        with exporter([pool]) as srv:
            with pool.connection() as conn:
                first_pid = conn.info.backend_pid
            sleep(0.45)
            with pool.connection() as conn:
                second_pid = conn.info.backend_pid
            s = scrape(srv.url)
    assert first_pid != second_pid  # ground truth: the server saw a new backend
    labels = {"pool": "truth-lifetime", "reason": "max_lifetime"}
    closed = s.value("poolwatch_connection_lifetime_seconds_count", **labels)
    assert closed == 1
    # It lived about max_lifetime (jittered down by at most 5%), well under a second.
    assert s.bucket("poolwatch_connection_lifetime_seconds", "1.0", **labels) == 1
    assert s.value("poolwatch_connection_lifetime_seconds_sum", **labels) >= 0.28


def test_a_terminated_backend_is_counted_as_broken(dsn, pg):
    app = "truth-broken-async"
    with ConnectionPool(
        dsn, min_size=1, max_size=1, kwargs={"application_name": app}, name="truth-broken"
    ) as pool:
        pool.wait()
        with exporter([pool]) as srv:
            conn = pool.getconn()
            assert pg.terminate_backends(app) == 1
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            pool.putconn(conn)
            s = scrape(srv.url)
    labels = {"pool": "truth-broken"}
    assert s.value("poolwatch_errors_total", kind="broken", **labels) == 1
    assert s.value("poolwatch_connection_lifetime_seconds_count", reason="broken", **labels) == 1


def test_a_leak_shows_as_one_leaked_connection(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2, leak_timeout=0.2, name="truth-leak") as pool:
        pool.wait()
        with exporter([pool]) as srv:
            leaked = pool.getconn()
            t0 = monotonic()
            with pool.connection():  # a well-behaved borrower beside it
                sleep(0.35)
                during = scrape(srv.url)
                held = monotonic() - t0
            pool.putconn(leaked)
            after = scrape(srv.url)
    labels = {"pool": "truth-leak"}
    # Both are older than 0.2 s while the scrape runs: the leak and the slow borrower.
    assert during.value("poolwatch_leaked_connections", **labels) == 2
    assert during.value("poolwatch_oldest_checkout_seconds", **labels) >= 0.35
    assert during.value("poolwatch_oldest_checkout_seconds", **labels) <= held + 0.05
    assert after.value("poolwatch_leaked_connections", **labels) == 0


def test_a_single_leak_counts_one(dsn):
    with ConnectionPool(
        dsn, min_size=1, max_size=2, leak_timeout=0.2, name="truth-one-leak"
    ) as pool:
        pool.wait()
        with exporter([pool]) as srv:
            leaked = pool.getconn()
            sleep(0.3)
            with pool.connection():
                s = scrape(srv.url)
            pool.putconn(leaked)
    assert s.value("poolwatch_leaked_connections", pool="truth-one-leak") == 1


def test_used_seconds_rate_is_the_mean_saturation(dsn):
    with ConnectionPool(dsn, min_size=4, max_size=4, name="truth-saturation") as pool:
        pool.wait()
        with exporter([pool]) as srv:
            held = [pool.getconn() for _ in range(3)]
            first, t1 = scrape(srv.url), monotonic()
            sleep(2.0)
            second, t2 = scrape(srv.url), monotonic()
            for conn in held:
                pool.putconn(conn)
    name = "poolwatch_used_connection_seconds_total"
    used = second.value(name, pool="truth-saturation") - first.value(name, pool="truth-saturation")
    saturation = used / (t2 - t1) / 4
    assert abs(saturation - 0.75) <= 0.75 * 0.05, saturation
    assert second.value("poolwatch_saturation_ratio", pool="truth-saturation") == 0.75
