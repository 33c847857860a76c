"""The status page's live sampler survives a failing read: it logs, counts, keeps sampling."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from poolwatch import ConnectionPool
from poolwatch.exporter.live import LiveHistory
from poolwatch.metrics.state import PoolState

from .scrape import exporter as serve


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_failing_read_does_not_stop_the_sampler(caplog):
    calls = {"n": 0}

    def read_states() -> list[PoolState]:
        calls["n"] += 1
        if calls["n"] == 3:  # one bad read, from the sampler thread
            raise RuntimeError("a state that cannot be read")
        return [PoolState(pool="p", info={}, scalars={("waits", ()): float(calls["n"])})]

    live = LiveHistory(read_states, interval=0.01)
    caplog.set_level(logging.WARNING, logger="poolwatch")
    try:
        live.ensure_started()
        assert wait_for(lambda: calls["n"] >= 10), "sampling stopped after the failing read"
        assert live.sample_errors == 1
        assert "a state that cannot be read" in caplog.text
        assert live.view()["sampler_errors"] == 1
    finally:
        live.stop()


def test_a_failing_first_read_still_starts_the_sampler():
    calls = {"n": 0}

    def read_states() -> list[PoolState]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("not ready yet")
        return []

    live = LiveHistory(read_states, interval=0.01)
    try:
        live.ensure_started()
        assert wait_for(lambda: calls["n"] >= 5)
        assert live.sample_errors == 1
    finally:
        live.stop()


@pytest.mark.db
def test_api_live_reports_sampler_errors_and_keeps_moving(dsn):
    with ConnectionPool(dsn, min_size=1, name="live-errors", open=True) as pool:
        pool.wait()
        with serve([pool]) as srv:
            live = srv.server.config.app.state.exporter.live
            live.interval = 0.01
            real = live.read_states
            failed = {"done": False}

            def once_broken() -> list[PoolState]:
                in_sampler = threading.current_thread().name == "poolwatch-live-history"
                if in_sampler and not failed["done"]:
                    failed["done"] = True
                    raise ValueError("injected sampler failure")
                return real()

            live.read_states = once_broken
            try:
                assert httpx.get(srv.url + "/api/live", timeout=10).status_code == 200
                assert wait_for(lambda: failed["done"])
                before = len(live.samples)
                assert wait_for(lambda: len(live.samples) > before + 3), "sampling stopped"
                body = httpx.get(srv.url + "/api/live", timeout=10).json()
                assert body["sampler_errors"] == 1
                assert body["pools"][0]["name"] == "live-errors"
            finally:
                live.stop()
