"""The verdict line on the status page, in a real headless Chromium."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool, PoolTimeout

from ..acompat import wait_until
from ..demo.test_status_page import chromium  # noqa: F401  (the browser fixture)
from ..metrics.scrape import exporter

pytestmark = [pytest.mark.db, pytest.mark.slow]


def verdict_text(page) -> str:
    return page.locator('.card[data-pool="judged"] [data-field="verdict"]').inner_text()


def test_page_shows_why_requests_wait(dsn, chromium):  # noqa: F811
    with ConnectionPool(dsn, min_size=1, max_size=1, name="judged", timeout=8) as pool:
        pool.wait()
        with exporter([pool], registry=CollectorRegistry()) as srv:
            page = chromium.new_page()
            page.goto(srv.url + "/")
            page.wait_for_selector('.card[data-pool="judged"]', timeout=10_000)
            wait_until(lambda: verdict_text(page).startswith("why: none"), timeout=10)

            def busy() -> None:  # one long query: the connection works, it is not idle
                with pool.connection() as conn:
                    conn.execute("SELECT pg_sleep(4)")

            def wait_for_one() -> None:
                try:
                    pool.putconn(pool.getconn())
                except PoolTimeout:
                    pass

            worker = threading.Thread(target=busy)
            worker.start()
            wait_until(lambda: pool.snapshot().used == 1, timeout=10)
            waiter = threading.Thread(target=wait_for_one)
            waiter.start()
            try:
                wait_until(lambda: verdict_text(page).startswith("why: too small"), timeout=15)
                (view,) = httpx.get(srv.url + "/pools", timeout=10).json()["pools"]
                assert view["verdict"]["cause"] == "too_small"
                assert "requests waited" in verdict_text(page)
            finally:
                worker.join(15)
                waiter.join(15)
            page.close()
