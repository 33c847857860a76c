"""GET /pools/{name}/checkouts over real HTTP, against checkouts the test holds itself."""

from __future__ import annotations

import inspect
import time
from time import monotonic

import httpx
import pytest

from poolwatch import ConnectionPool
from poolwatch.insight.activity import unwatch, watch

from ..metrics.scrape import exporter

pytestmark = pytest.mark.db

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def take_in_transaction(pool):
    line = inspect.currentframe().f_lineno + 1
    conn = pool.getconn()
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # leaves a transaction open
    return conn, pid, line


def take_idle(pool):
    line = inspect.currentframe().f_lineno + 1
    conn = pool.getconn()
    conn.autocommit = True
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    return conn, pid, line


def test_current_checkouts_with_age_site_status_pid_and_leak(dsn):
    here = "insight/test_checkouts.py"
    with ConnectionPool(dsn, min_size=3, name="holders", leak_timeout=0.4) as pool:
        pool.wait()
        watch(pool, call_sites=True)
        try:
            with exporter([pool], token=TOKEN) as srv:
                url = srv.url + "/pools/holders/checkouts"
                t_a0 = monotonic()
                a, pid_a, line_a = take_in_transaction(pool)
                t_a1 = monotonic()
                time.sleep(0.6)
                t_b0 = monotonic()
                b, pid_b, line_b = take_idle(pool)
                t_b1 = monotonic()
                t_req0 = monotonic()
                r = httpx.get(url, headers=AUTH, timeout=10)
                t_req1 = monotonic()
                denied = httpx.get(url, timeout=10)
                missing = httpx.get(srv.url + "/pools/nope/checkouts", headers=AUTH, timeout=10)
                page_view = httpx.get(srv.url + "/api/checkouts", headers=AUTH, timeout=10)
                page_denied = httpx.get(srv.url + "/api/checkouts", timeout=10)
                pool.putconn(a)
                pool.putconn(b)
                after = httpx.get(url, headers=AUTH, timeout=10).json()
        finally:
            unwatch(pool)

    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["name"] == "holders"
    first, second = body["checkouts"]  # oldest first
    assert t_req0 - t_a1 <= first["age_seconds"] <= t_req1 - t_a0
    assert t_req0 - t_b1 <= second["age_seconds"] <= t_req1 - t_b0
    assert first["site"] == f"{here}:{line_a} in take_in_transaction"
    assert second["site"] == f"{here}:{line_b} in take_idle"
    assert first["transaction_status"] == "idle_in_transaction"
    assert second["transaction_status"] == "idle"
    assert (first["backend_pid"], second["backend_pid"]) == (pid_a, pid_b)
    assert (first["leaked"], second["leaked"]) == (True, False)

    assert denied.status_code == 401 and page_denied.status_code == 401
    # the status page's view: the same checkouts, by pool name
    (listed,) = page_view.json()["pools"]
    assert listed["name"] == "holders"
    assert [c["site"] for c in listed["checkouts"]] == [first["site"], second["site"]]
    assert missing.status_code == 404
    assert after["checkouts"] == []


def test_without_call_sites_the_site_is_unknown(dsn):
    with ConnectionPool(dsn, min_size=1, name="anon") as pool:
        pool.wait()
        with exporter([pool]) as srv, pool.connection():
            body = httpx.get(srv.url + "/pools/anon/checkouts", timeout=10).json()
    (row,) = body["checkouts"]
    assert row["site"] == "(unknown)" and row["leaked"] is False
