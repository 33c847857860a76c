"""The status page shows the activity split, the top call sites and the oldest checkouts."""

from __future__ import annotations

import inspect
import re
import time

import pytest

from poolwatch import ConnectionPool
from poolwatch.insight.activity import unwatch, watch

from ..acompat import wait_until
from ..demo.test_status_page import chromium  # noqa: F401  (the browser fixture)
from ..metrics.scrape import exporter

pytestmark = [pytest.mark.db, pytest.mark.slow]

TOKEN = "page-t0ken"
HERE = "insight/test_status_page.py"


def hold_across_a_slow_call(pool):
    line = inspect.currentframe().f_lineno + 1
    conn = pool.getconn()
    conn.execute("SELECT 1")  # a transaction is open; now the "external call" begins
    return conn, line


def idle_in_tx_percent(activity: str) -> int:
    """The share the page gives "idle in transaction" ("query 0%, idle in transaction 100%, …")."""
    match = re.search(r"idle in transaction (\d+)%", activity)
    return int(match.group(1)) if match else -1


def field(page, name: str) -> str:
    return page.locator(f'.card[data-pool="held"] [data-field="{name}"]').inner_text()


def test_page_names_what_held_connections_do_and_who_holds_them(dsn, chromium):  # noqa: F811
    with ConnectionPool(dsn, min_size=2, name="held", leak_timeout=0.5) as pool:
        pool.wait()
        watch(pool, call_sites=True)
        try:
            with exporter([pool], token=TOKEN) as srv:
                conn, line = hold_across_a_slow_call(pool)
                site = f"{HERE}:{line} in hold_across_a_slow_call"
                time.sleep(0.7)
                page = chromium.new_page()
                page.goto(srv.url + "/#token=" + TOKEN)
                page.wait_for_selector('.card[data-pool="held"]', timeout=10_000)
                # the connection is still held: it shows among the oldest checkouts
                wait_until(lambda: site in field(page, "checkouts"), timeout=10)
                oldest = field(page, "checkouts")
                assert "idle_in_transaction" in oldest and "LEAKED" in oldest, oldest
                # the call-site table counts it while it is held, and its share is idle in tx
                wait_until(lambda: site in field(page, "callsites"), timeout=10)
                wait_until(lambda: idle_in_tx_percent(field(page, "activity")) >= 90, timeout=10)
                pool.putconn(conn)
                wait_until(lambda: "none" in field(page, "checkouts"), timeout=10)
                page.close()
        finally:
            unwatch(pool)
