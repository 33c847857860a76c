"""Property: in one process the exported counters and buckets never decrease.

A hypothesis state machine opens, uses, closes and re-creates pools under one name,
and drops references to pools (closed or still open) before collecting garbage.
After every step the registry is read twice, through ``register()`` +
``generate_latest`` and through the exporter's ``/metrics`` (its own text path),
and every counter, histogram bucket, count and sum must be at least what it was,
no series may vanish, and the acquire count must equal the checkouts made.
"""

from __future__ import annotations

import gc

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poolwatch import ConnectionPool
from poolwatch.exporter.helpers import start_exporter
from poolwatch.metrics import register

pytestmark = [pytest.mark.db, pytest.mark.slow]

NAME = "kept"
SETTINGS = settings(
    max_examples=4,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
Series = tuple[str, tuple[tuple[str, str], ...]]
OK: Series = ("poolwatch_acquire_seconds_count", (("outcome", "ok"), ("pool", NAME)))


def counting_series(text: str) -> dict[Series, float]:
    """Every counter and histogram sample of the pool NAME in *text*."""
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for s in family.samples:
            if s.labels.get("pool") == NAME:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class OneProcessMachine(RuleBasedStateMachine):
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.registry = CollectorRegistry()
        self.server = start_exporter(port=0, registry=self.registry, include_registry=False)
        self.open: list[ConnectionPool] = []
        self.closed: list[ConnectionPool] = []
        self.made = 0  # checkouts made: the truth
        self.highest: dict[str, dict[Series, float]] = {"registry": {}, "exporter": {}}

    def teardown(self) -> None:
        self.server.stop()
        for pool in self.open:
            pool.close()

    @precondition(lambda self: len(self.open) < 3)
    @rule()
    def open_pool(self) -> None:
        pool = ConnectionPool(self.dsn, min_size=1, max_size=2, name=NAME, open=True)
        register(pool, self.registry)
        self.open.append(pool)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), n=st.integers(1, 4))
    def use(self, data: st.DataObject, n: int) -> None:
        pool = data.draw(st.sampled_from(self.open))
        for _ in range(n):
            with pool.connection():
                pass
        self.made += n

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close_pool(self, data: st.DataObject) -> None:
        pool = data.draw(st.sampled_from(self.open))
        self.open.remove(pool)
        pool.close()
        self.closed.append(pool)  # still referenced: closed, not collected

    @precondition(lambda self: self.closed)
    @rule(data=st.data())
    def drop_closed(self, data: st.DataObject) -> None:
        pool = data.draw(st.sampled_from(self.closed))
        self.closed.remove(pool)
        del pool
        gc.collect()  # a later pool may take this one's address

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def drop_open(self, data: st.DataObject) -> None:
        pool = data.draw(st.sampled_from(self.open))
        self.open.remove(pool)
        del pool  # never closed: its counts are those of the last read
        gc.collect()

    @invariant()
    def counters_never_decrease(self) -> None:
        reads = {
            "registry": generate_latest(self.registry).decode(),
            "exporter": httpx.get(self.server.url + "/metrics", timeout=30).text,
        }
        for path, text in reads.items():
            exported = counting_series(text)
            highest = self.highest[path]
            for key, value in exported.items():
                before = highest.get(key, 0.0)
                assert value >= before, f"{path}: {key} went back from {before} to {value}"
                highest[key] = value
            missing = [key for key in highest if key not in exported]
            assert not missing, f"{path}: series vanished: {missing[:3]}"
            assert exported.get(OK, 0) == self.made, path


def test_exported_counters_never_decrease_in_one_process(dsn, request):
    machine = type("OneProcessMachine_", (OneProcessMachine,), {"dsn": dsn})
    test_case = machine.TestCase
    long = request.config.getoption("--long")
    test_case.settings = settings(SETTINGS, max_examples=40 if long else 4)
    test_case().runTest()
