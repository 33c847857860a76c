"""`poolwatch serve`: a standalone exporter for the pools other processes write down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool
from poolwatch.embedded import free_port
from poolwatch.metrics.multiprocess import MultiprocessLink
from poolwatch.metrics.prometheus import PoolCollector

from .scrape import Scrape

pytestmark = pytest.mark.db


def poolwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poolwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_help_explains_serve():
    out = poolwatch("serve", "--help")
    assert out.returncode == 0
    assert "--multiproc-dir" in out.stdout and "127.0.0.1" in out.stdout


def test_serve_without_a_directory_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = poolwatch("serve", env=env)
    assert out.returncode == 2
    assert "--multiproc-dir" in out.stderr
    out = poolwatch("serve", "--multiproc-dir", "/nonexistent/poolwatch")
    assert out.returncode == 2 and "is not a directory" in out.stderr


def test_serve_exports_what_a_worker_wrote(dsn, tmp_path):
    collector = PoolCollector()
    CollectorRegistry().register(collector)
    collector.multiprocess = MultiprocessLink(str(tmp_path), collector)
    port = free_port()
    env = {**os.environ, "POOLWATCH_TOKEN": "tok-123"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolwatch.cli", "serve", "--multiproc-dir", str(tmp_path),
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with ConnectionPool(dsn, min_size=1, name="served", open=True) as pool:
            pool.wait()
            collector.add(pool)
            for _ in range(7):
                with pool.connection():
                    pass
            collector.multiprocess.write()
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    r = httpx.get(url + "/metrics", headers={"Authorization": "Bearer tok-123"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            assert httpx.get(url + "/metrics").status_code == 401
            pools = httpx.get(url + "/pools", headers={"Authorization": "Bearer tok-123"})
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    from prometheus_client.parser import text_string_to_metric_families

    s = Scrape(r.text, {f.name: f for f in text_string_to_metric_families(r.text)})
    assert s.value("poolwatch_acquire_seconds_count", pool="served", outcome="ok") == 7
    assert pools.json()["pools"][0]["name"] == "served"
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert "tok-123" not in out
