"""Every family of the contract is scraped with its type, unit and labels; promtool agrees."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.metrics import METRICS, register, state_of
from poolwatch.metrics.exposition import render
from poolwatch.metrics.prometheus import families

from .scrape import exporter, require_tool, scrape

pytestmark = pytest.mark.db

# The SPEC's table, written out by hand: the name table must not drift from it.
CONTRACT = {
    "poolwatch_connections": ("gauge", {"state"}),
    "poolwatch_connections_max": ("gauge", set()),
    "poolwatch_connections_min": ("gauge", set()),
    "poolwatch_pending_requests": ("gauge", set()),
    "poolwatch_saturation_ratio": ("gauge", set()),
    "poolwatch_used_connection_seconds": ("counter", set()),
    "poolwatch_waits": ("counter", set()),
    "poolwatch_acquire_seconds": ("histogram", {"outcome"}),
    "poolwatch_use_seconds": ("histogram", set()),
    "poolwatch_connect_seconds": ("histogram", {"outcome"}),
    "poolwatch_connection_lifetime_seconds": ("histogram", {"reason"}),
    "poolwatch_errors": ("counter", {"kind", "sqlstate_class"}),
    "poolwatch_leaked_connections": ("gauge", set()),
    "poolwatch_oldest_checkout_seconds": ("gauge", set()),
    "poolwatch_oldest_wait_seconds": ("gauge", set()),
    "poolwatch_server_max_connections": ("gauge", set()),
    "poolwatch_checkout_activity_seconds": ("counter", {"activity"}),
    "poolwatch_callsite_hold_seconds": ("counter", {"site"}),
    "poolwatch_callsite_idle_in_transaction_seconds": ("counter", {"site"}),
    "poolwatch_callsite_checkouts": ("counter", {"site"}),
    "poolwatch_callsite_waits_caused": ("counter", {"site"}),
    "poolwatch_pool": ("info", {"host", "port", "dbname", "application_name", "version"}),
}


@pytest.fixture
def busy_pool(dsn):
    """An open pool that has been through waits, a timeout, a close and a leak."""
    with ConnectionPool(
        dsn, min_size=1, max_size=2, leak_timeout=0.05, name="contract", timeout=0.2
    ) as pool:
        pool.wait()
        a, b = pool.getconn(), pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        b.close()  # broken on return: a close with a reason
        pool.putconn(b)
        yield pool
        pool.putconn(a)


def test_the_name_table_is_the_contract():
    table = {m.prom: (m.type, set(m.labels)) for m in METRICS}
    assert table == CONTRACT


def test_every_family_is_scraped_with_type_unit_and_labels(busy_pool):
    with exporter([busy_pool]) as srv:
        s = scrape(srv.url, openmetrics=True)
    for metric in METRICS:
        if metric.opt_in:  # call sites: exported only when asked (tests/insight covers them)
            continue
        family = s.families.get(metric.prom)
        assert family is not None, f"{metric.prom} missing from /metrics"
        assert family.type == metric.type, metric.prom
        assert family.unit == metric.unit, metric.prom
        assert family.samples, metric.prom
        for sample in family.samples:
            assert sample.labels["pool"] == "contract"
            names = set(sample.labels) - {"pool", "le"}
            assert names == set(metric.labels), (metric.prom, sample.labels)
            for label, allowed in metric.labels.items():
                if allowed:
                    assert sample.labels[label] in allowed, (metric.prom, sample.labels)
    info = s.samples("poolwatch_pool_info", pool="contract")[0][0]
    assert info["host"] == "127.0.0.1" and info["dbname"] == "postgres"
    assert info["version"].split(".")[0].isdigit()
    assert s.value("poolwatch_server_max_connections", pool="contract") > 0


def test_text_and_openmetrics_carry_the_same_samples(busy_pool):
    with exporter([busy_pool]) as srv:
        text = scrape(srv.url)
        om = scrape(srv.url, openmetrics=True)
    volatile = {
        "poolwatch_oldest_checkout_seconds",
        "poolwatch_used_connection_seconds_total",
        "poolwatch_checkout_activity_seconds_total",  # grows with every sample while held
    }

    def stable(scraped):
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in scraped.families.values()
            for s in f.samples
            if s.name.startswith("poolwatch_") and s.name not in volatile
        }

    assert stable(text) == stable(om)
    assert om.text.endswith("# EOF\n")


def test_prometheus_client_path_equals_the_fast_renderer(busy_pool):
    """register() into a prometheus_client registry renders the same bytes' meaning."""
    states = [state_of(busy_pool)]
    fast = render(states)

    class Fixed:
        def collect(self):
            return families(states)

    registry = CollectorRegistry()
    registry.register(Fixed())
    slow = generate_latest(registry).decode()

    def parsed(text):
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
        )

    assert parsed(fast) == parsed(slow)


def test_register_into_a_registry_and_series_vanish_on_close(dsn):
    """Closing a pool ends its gauges and pool_info; its counters and histograms stay.

    Counters are monotonic for the life of the process (SPEC, "Metric truth"): the
    closed pool's final counts stay exported under its name, and a later pool of
    that name adds to them.
    """
    registry = CollectorRegistry()
    pool = ConnectionPool(dsn, min_size=1, name="vanishing", open=False)
    register(pool, registry)
    assert b"vanishing" not in generate_latest(registry)  # not open yet: no series
    pool.open(wait=True)
    with pool.connection():
        pass
    assert b'poolwatch_connections_max{pool="vanishing"} 1.0' in generate_latest(registry)
    pool.close()
    text = generate_latest(registry).decode()
    assert 'poolwatch_connections_max{pool="vanishing"}' not in text
    assert "poolwatch_pool_info{" not in text
    assert 'poolwatch_acquire_seconds_count{outcome="ok",pool="vanishing"} 1.0' in text
    again = ConnectionPool(dsn, min_size=1, name="vanishing")
    register(again, registry)
    with again, again.connection():
        text = generate_latest(registry).decode()
    assert 'poolwatch_acquire_seconds_count{outcome="ok",pool="vanishing"} 2.0' in text
    assert 'poolwatch_connections_max{pool="vanishing"} 1.0' in text


def test_two_pools_with_one_name_are_summed_not_duplicated(dsn):
    registry = CollectorRegistry()
    with (
        ConnectionPool(dsn, min_size=1, name="twin") as p1,
        ConnectionPool(dsn, min_size=2, max_size=3, name="twin") as p2,
    ):
        register(p1, registry)
        register(p2, registry)
        text = generate_latest(registry).decode()
    assert text.count('poolwatch_connections_max{pool="twin"}') == 1
    assert 'poolwatch_connections_max{pool="twin"} 4.0' in text


def test_promtool_finds_nothing_to_lint(busy_pool):
    promtool = require_tool("promtool")
    with exporter([busy_pool], include_registry=True) as srv:
        s = scrape(srv.url)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=s.text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


def test_labels_never_carry_the_dsn(busy_pool, secret):
    with exporter([busy_pool]) as srv:
        s = scrape(srv.url)
    assert secret not in s.text
    assert "password" not in s.text


def test_a_hostile_pool_name_is_escaped(dsn):
    # (control characters such as a newline are refused in names since issue 13)
    name = 'we"ird\\name} with {braces="x"'
    with ConnectionPool(dsn, min_size=1, name=name) as pool, exporter([pool]) as srv:
        s = scrape(srv.url)
    assert s.value("poolwatch_connections_max", pool=name) == 1


def test_connect_errors_carry_their_sqlstate_class(pg):
    bad = pg.dsn(password="not-the-password")
    with ConnectionPool(
        bad, min_size=1, name="bad-auth", reconnect_timeout=0.5, open=False
    ) as pool:
        pool.open(wait=False)
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.3)
        with exporter([pool]) as srv:
            s = scrape(srv.url)
    errors = s.value("poolwatch_errors_total", pool="bad-auth", kind="connect", sqlstate_class="28")
    assert errors >= 1
    failed = s.value("poolwatch_connect_seconds_count", pool="bad-auth", outcome="error")
    assert failed == errors
    assert "not-the-password" not in s.text


def test_docs_metrics_md_is_generated_from_the_table():
    from pathlib import Path

    from poolwatch.metrics.docs import metrics_markdown

    committed = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    assert committed.read_text() == metrics_markdown(), (
        "docs/metrics.md is stale: python -m poolwatch.metrics.docs > docs/metrics.md"
    )


def test_long_configuration_values_are_bounded_and_kept_apart(dsn):
    long_a, long_b = "svc-" + "a" * 300, "svc-" + "a" * 299 + "b"
    app = "x" * 60 + '"\\\n'  # quotes, a backslash and a newline, near PostgreSQL's limit
    with (
        ConnectionPool(
            dsn, min_size=1, name=long_a, open=True, kwargs={"application_name": app}
        ) as a,
        ConnectionPool(dsn, min_size=1, name=long_b, open=True) as b,
    ):
        a.wait()
        b.wait()
        with exporter([a, b]) as srv:
            s = scrape(srv.url, openmetrics=True)
    names = {labels["pool"] for labels, _ in s.samples("poolwatch_connections_max")}
    assert len(names) == 2 and all(len(n) <= 128 for n in names)
    assert all(n.startswith("svc-aaaa") for n in names)
    infos = [labels for labels, _ in s.samples("poolwatch_pool_info")]
    assert any(i["application_name"].startswith("x" * 60) for i in infos)
    for family in s.families.values():
        for sample in family.samples:
            assert all(len(v) <= 128 for v in sample.labels.values())


def test_a_missing_multiprocess_directory_is_a_clear_error(dsn, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    registry = CollectorRegistry()
    with ConnectionPool(dsn, min_size=1, open=True) as pool:
        with pytest.raises(FileNotFoundError, match="PROMETHEUS_MULTIPROC_DIR"):
            register(pool, registry)
        (tmp_path / "missing").mkdir()
        collector = register(pool, registry)  # nothing was left half-registered
        assert collector.multiprocess is not None
        collector.multiprocess.stop()
