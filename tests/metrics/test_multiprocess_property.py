"""Property: in multiprocess mode the exported counters and buckets never decrease.

A hypothesis state machine mixes what a fleet does to one pool name: pools opened,
used, closed and re-created in this process; worker processes that exit, some in a
fresh PID namespace where each of them is pid 1 (pid reuse); workers that fork a
child which exits normally. After every step the directory is scraped as a worker's
/metrics is (`PoolCollector.render`, parsed back) and every counter, histogram
bucket, count and sum must be at least what it was, and the acquire count must
equal the checkouts made. `pytest --long` runs many more examples.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from poolwatch import ConnectionPool
from poolwatch.metrics.multiprocess import MultiprocessLink
from poolwatch.metrics.prometheus import PoolCollector

from .scrape import require_tool

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAME = "mp"
SETTINGS = settings(
    max_examples=4,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
Series = tuple[str, tuple[tuple[str, str], ...]]


class FleetMachine(RuleBasedStateMachine):
    dsn: str
    unshare: str

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="poolwatch-property-"))
        self.collector = PoolCollector()
        CollectorRegistry().register(self.collector)
        self.link = MultiprocessLink(str(self.directory), self.collector)
        self.collector.multiprocess = self.link
        self.pools: list[ConnectionPool] = []
        self.made = 0  # checkouts made, everywhere: the truth
        self.highest: dict[Series, float] = {}

    def teardown(self) -> None:
        for pool in self.pools:
            pool.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def worker(self, *args: str, new_pid_namespace: bool = False) -> None:
        command = [sys.executable, "-m", "tests.metrics.mp_worker", *args]
        if new_pid_namespace:
            command = [self.unshare, "--pid", "--fork", *command]
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.directory),
            "POOLWATCH_TEST_DSN": self.dsn,
            "POOLWATCH_TEST_LINGER": "0",
        }
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()

    @rule()
    def open_pool(self) -> None:
        pool = ConnectionPool(self.dsn, min_size=1, max_size=2, name=NAME, open=True)
        self.collector.add(pool)
        self.link.track(pool)
        self.pools.append(pool)

    @precondition(lambda self: self.pools)
    @rule(data=st.data(), n=st.integers(1, 4))
    def use(self, data: st.DataObject, n: int) -> None:
        pool = data.draw(st.sampled_from(self.pools))
        for _ in range(n):
            with pool.connection():
                pass
        self.made += n

    @precondition(lambda self: self.pools)
    @rule(data=st.data())
    def close_pool(self, data: st.DataObject) -> None:
        pool = data.draw(st.sampled_from(self.pools))
        self.pools.remove(pool)
        pool.close()
        del pool
        gc.collect()  # a later pool may take this one's address

    @rule(n=st.integers(0, 3), new_pid_namespace=st.booleans())
    def worker_exits(self, n: int, new_pid_namespace: bool) -> None:
        self.worker("work", str(n), new_pid_namespace=new_pid_namespace)
        self.made += n

    @rule(parent=st.integers(0, 3), child=st.integers(0, 2))
    def worker_forks(self, parent: int, child: int) -> None:
        self.worker("fork", str(parent), str(child))
        self.made += parent + child

    @invariant()
    def counters_never_decrease(self) -> None:
        text = self.collector.render()
        exported: dict[Series, float] = {}
        for family in text_string_to_metric_families(text):
            if family.type not in ("counter", "histogram"):
                continue
            for s in family.samples:
                if s.labels.get("pool") == NAME:
                    exported[(s.name, tuple(sorted(s.labels.items())))] = s.value
        for key, value in exported.items():
            before = self.highest.get(key, 0.0)
            assert value >= before, f"{key} went back from {before} to {value}"
            self.highest[key] = value
        missing = [key for key in self.highest if key not in exported]
        assert not missing, f"series vanished: {missing[:3]}"
        ok = (
            "poolwatch_acquire_seconds_count",
            (("outcome", "ok"), ("pool", NAME)),
        )
        assert exported.get(ok, 0) == self.made


def test_exported_counters_never_decrease_across_a_fleet(dsn, request):
    machine = type(
        "FleetMachine_",
        (FleetMachine,),
        {"dsn": dsn, "unshare": require_tool("unshare")},
    )
    test_case = machine.TestCase
    long = request.config.getoption("--long")
    test_case.settings = settings(SETTINGS, max_examples=60 if long else 4)
    test_case().runTest()
