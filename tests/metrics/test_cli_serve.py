"""`poolwatch serve`: a standalone exporter for the pools other processes write down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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


def test_serve_in_another_pid_namespace_keeps_gauges_and_readiness(dsn, tmp_path):
    """Finding 5: a sidecar sees none of the workers' pids; gauges and /readyz still work.

    `unshare --pid --fork` runs the exporter as pid 1 of a namespace of its own, as a
    sidecar container runs; the worker (this process) is invisible from there.
    """
    from .scrape import require_tool

    unshare = require_tool("unshare")
    collector = PoolCollector()
    CollectorRegistry().register(collector)
    link = MultiprocessLink(str(tmp_path), collector)
    collector.multiprocess = link
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child=SIGINT", sys.executable, "-m",
         "poolwatch.cli", "serve", "--multiproc-dir", str(tmp_path), "--port", str(port),
         "--ready-max-wait", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                empty = httpx.get(url + "/readyz", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        # No worker has written a state yet: nothing to be ready for.
        assert empty.status_code == 503
        with ConnectionPool(dsn, min_size=1, max_size=1, name="sidecar", open=True) as pool:
            pool.wait()
            collector.add(pool)
            link.start()  # the heartbeat: a write every WRITE_INTERVAL
            with pool.connection():
                link.write()
                r = httpx.get(url + "/metrics", timeout=10)
                ready = httpx.get(url + "/readyz", timeout=10)
                # A request queues for the only connection: after ready_max_wait, not ready.
                waiter = threading.Thread(target=lambda: pool.connection(timeout=30).__enter__())
                waiter.start()
                deadline = time.monotonic() + 30
                while True:
                    link.write()
                    exhausted = httpx.get(url + "/readyz", timeout=10)
                    if exhausted.status_code == 503 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            waiter.join(timeout=30)
            link.stop()
    finally:
        proc.kill()  # unshare passes SIGINT on to the exporter (--kill-child)
        out, _ = proc.communicate(timeout=30)
    from prometheus_client.parser import text_string_to_metric_families

    s = Scrape(r.text, {f.name: f for f in text_string_to_metric_families(r.text)})
    assert s.value("poolwatch_connections_max", pool="sidecar") == 1
    assert s.value("poolwatch_connections", pool="sidecar", state="used") == 1
    assert s.value("poolwatch_saturation_ratio", pool="sidecar") == 1
    assert ready.status_code == 200, ready.text
    assert ready.json()["pools"]["sidecar"]["ready"] is True
    assert exhausted.status_code == 503, exhausted.text
    assert "exhausted" in exhausted.json()["pools"]["sidecar"]["reason"]
    assert f"{url}/metrics" in out


def test_serve_warns_about_a_world_writable_directory(tmp_path):
    tmp_path.chmod(0o777)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolwatch.cli", "serve", "--multiproc-dir", str(tmp_path),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert "world-writable" in out and "0700" in out
