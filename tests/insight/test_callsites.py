"""Ground truth for call sites: two functions borrow with known hold times and counts.

The test times every hold itself and knows the line of each ``with pool.connection()``;
the table, /pools, the opt-in Prometheus series and the sampler must agree with it.
"""

from __future__ import annotations

import inspect
import threading
import time
from time import monotonic

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.insight.activity import MAX_EXPORTED_SITES, unwatch, watch
from poolwatch.insight.callsites import OTHER, SiteFinder, SiteTable
from poolwatch.metrics.otel import instrument

from ..metrics.scrape import exporter, scrape

pytestmark = pytest.mark.db

HERE = "insight/test_callsites.py"


def hold_briefly(pool, held: list[float]) -> int:
    """Borrow, do nothing with the connection, give it back after 0.1 s."""
    line = inspect.currentframe().f_lineno + 1
    with pool.connection():
        t0 = monotonic()
        time.sleep(0.1)
        held.append(monotonic() - t0)
    return line


def hold_in_transaction(pool, held: list[float], during=None) -> int:
    """Borrow, open a transaction, then keep it idle for 0.3 s (the classic held-idle)."""
    line = inspect.currentframe().f_lineno + 1
    with pool.connection() as conn:
        t0 = monotonic()
        conn.execute("SELECT 1")
        if during is not None:
            during()
        time.sleep(0.3)
        held.append(monotonic() - t0)
    return line


def close_to(reported: float, measured: float) -> bool:
    # each checkout's last moments, after the last sample, are not credited: allow one
    # (generous, loaded-machine) sample gap per checkout
    return abs(reported - measured) <= max(0.15 * measured, 0.03)


def test_two_call_sites_with_known_holds_and_counts(dsn):
    brief: list[float] = []
    in_tx: list[float] = []
    waiter_done = threading.Event()

    def queue_a_request() -> None:
        # a request that must wait: the only connection is held by hold_in_transaction
        def borrow() -> None:
            with pool.connection():
                pass
            waiter_done.set()

        threading.Thread(target=borrow, daemon=True).start()

    with ConnectionPool(dsn, min_size=1, max_size=1, name="sites") as pool:
        pool.wait()
        insight = watch(pool, call_sites=True, export_call_sites=True)
        try:
            for _ in range(5):
                brief_line = hold_briefly(pool, brief)
            tx_line = hold_in_transaction(pool, in_tx, during=queue_a_request)
            assert waiter_done.wait(10)
            for _ in range(2):
                hold_in_transaction(pool, in_tx)
            time.sleep(0.1)
            waits = pool.aggregates().waits
            with exporter([pool], token="s3cret") as srv:
                s = scrape(srv.url, token="s3cret")
                body = httpx.get(
                    srv.url + "/pools", headers={"Authorization": "Bearer s3cret"}, timeout=10
                ).json()
        finally:
            unwatch(pool)
    assert waits == 1

    rows = {r.site: r for r in insight.table.rows()}
    brief_site = f"{HERE}:{brief_line} in hold_briefly"
    tx_site = f"{HERE}:{tx_line} in hold_in_transaction"
    assert brief_site in rows and tx_site in rows, list(rows)
    b, t = rows[brief_site], rows[tx_site]
    assert (b.count, t.count) == (5, 3)
    assert close_to(b.hold_seconds, sum(brief)), (b, brief)
    assert close_to(t.hold_seconds, sum(in_tx)), (t, in_tx)
    # held idle in a transaction: nearly all of it; the brief one never opened one
    assert t.idle_in_transaction_seconds >= 0.8 * t.hold_seconds, t
    assert b.idle_in_transaction_seconds == 0.0, b
    assert (t.waits_caused, b.waits_caused) == (1, 0)
    # most hold time first
    assert insight.table.rows()[0].site == tx_site

    (view,) = [p for p in body["pools"] if p["name"] == "sites"]
    by_site = {r["site"]: r for r in view["callsites"]}
    assert by_site[tx_site]["count"] == 3 and by_site[brief_site]["count"] == 5
    assert by_site[tx_site]["waits_caused"] == 1
    assert set(view["activity"]) == {"query", "idle_in_transaction", "idle"}

    # the opt-in Prometheus series carry the same table
    assert s.value("poolwatch_callsite_checkouts_total", pool="sites", site=tx_site) == 3
    assert s.value("poolwatch_callsite_checkouts_total", pool="sites", site=brief_site) == 5
    hold = s.value("poolwatch_callsite_hold_seconds_total", pool="sites", site=tx_site)
    assert close_to(hold, sum(in_tx))
    assert s.value("poolwatch_callsite_waits_caused_total", pool="sites", site=tx_site) == 1
    activity = {
        a: s.value("poolwatch_checkout_activity_seconds_total", pool="sites", activity=a)
        for a in ("query", "idle_in_transaction", "idle")
    }
    assert close_to(activity["idle_in_transaction"], sum(in_tx)), activity
    assert close_to(activity["idle"], sum(brief) + 0.0), activity


def test_call_sites_are_not_exported_unless_asked(dsn):
    with ConnectionPool(dsn, min_size=1, name="sites-private") as pool:
        pool.wait()
        watch(pool, call_sites=True)
        try:
            with pool.connection():
                time.sleep(0.05)
            with exporter([pool]) as srv:
                s = scrape(srv.url)
        finally:
            unwatch(pool)
    assert "poolwatch_callsite_" not in s.text
    assert s.samples("poolwatch_checkout_activity_seconds_total", pool="sites-private")


def test_export_has_a_hard_cap():
    with pytest.raises(ValueError, match="at most"):
        watch(ConnectionPool("", open=False), call_sites=True, export_call_sites=True, top=500)
    with pytest.raises(ValueError, match="call_sites=True"):
        watch(ConnectionPool("", open=False), export_call_sites=True)
    assert MAX_EXPORTED_SITES == 20


def test_the_table_stays_bounded_and_its_sums_never_shrink():
    table = SiteTable(top=3)
    total = 0.0
    for i in range(50):
        with table.lock:
            row = table.row(f"site{i}.py:1 in f")
            row.count += 1
            row.hold_seconds += i
        total += i
        rows = table.rows()
        assert len([r for r in rows if r.site != OTHER]) <= 3
        assert sum(r.hold_seconds for r in rows) == total
        assert sum(r.count for r in rows) == i + 1


def test_framework_plumbing_is_skipped_and_configurable():
    # a company's own database helper, in a module of its own
    helpers = {"__name__": "mycompany.db"}
    exec("def run_query(find):\n    return find()\n", helpers)

    def view(find):
        return helpers["run_query"](find)

    line = inspect.getsourcelines(view)[1] + 1
    here = inspect.currentframe()
    site = SiteFinder()()  # called from this test's own frame
    assert site == f"{HERE}:{here.f_lineno - 1} in {here.f_code.co_name}"
    # by default the helper is the borrower; named as plumbing, its caller is
    assert view(SiteFinder()).endswith(":2 in run_query")
    assert view(SiteFinder(skip=["mycompany"])) == f"{HERE}:{line} in view"
    # a module and its submodules match, a mere prefix of the name does not
    assert view(SiteFinder(skip=["mycompany.db"])) == f"{HERE}:{line} in view"
    assert view(SiteFinder(skip=["mycomp"])).endswith(":2 in run_query")
    with pytest.raises(ValueError):
        SiteFinder(skip=[""])


def test_async_call_sites_and_otel(dsn):
    import asyncio

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    async def borrow(pool) -> int:
        line = inspect.currentframe().f_lineno + 1
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            await asyncio.sleep(0.2)
        return line

    async def main():
        async with AsyncConnectionPool(dsn, min_size=1, name="sites-async") as pool:
            await pool.wait()
            insight = watch(pool, call_sites=True)
            instrument([pool], meter_provider=provider)
            try:
                lines = [await borrow(pool) for _ in range(2)]
                await asyncio.sleep(0.05)
                data = reader.get_metrics_data()
            finally:
                unwatch(pool)
            return insight, lines[0], data

    insight, line, data = asyncio.run(main())
    (row,) = [r for r in insight.table.rows() if r.site == f"{HERE}:{line} in borrow"]
    assert row.count == 2
    assert row.idle_in_transaction_seconds >= 0.3
    points = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "poolwatch.checkout.activity.time":
                    for p in m.data.data_points:
                        points[p.attributes["poolwatch.activity"]] = p.value
    assert set(points) == {"query", "idle_in_transaction", "idle"}
    assert points["idle_in_transaction"] >= 0.3
