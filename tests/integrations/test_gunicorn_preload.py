"""gunicorn --preload: a pool opened before fork() is refused in the workers, the recipe works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..metrics.test_multiprocess import free_port

pytestmark = [pytest.mark.db, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def run_gunicorn(app: str, dsn: str, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / f"{app}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", f"tests.integrations.preload_app:{app}", "--preload",
         "--workers", "2", "--worker-class", "uvicorn_worker.UvicornWorker",
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"],
        cwd=ROOT, env={**os.environ, "POOLWATCH_TEST_DSN": dsn}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=2)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"gunicorn did not start:\n{log.read()}")
            time.sleep(0.2)
    return proc, url, log


def stop(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


def test_a_pool_inherited_through_preload_is_refused_in_workers(dsn, tmp_path):
    proc, url, log = run_gunicorn("wrong", dsn, tmp_path)
    try:
        answers = [httpx.get(url, headers={"Connection": "close"}, timeout=10).json()
                   for _ in range(6)]  # fmt: skip
    finally:
        stop(proc, log)
    for answer in answers:
        assert answer["error"] is not None, "a worker used the master's connections"
        assert "forked child process" in answer["error"]
        assert str(answer["pid"]) in answer["error"]  # names the worker ...
        assert str(proc.pid) in answer["error"]  # ... and the master that opened it


def test_the_recipe_works_under_preload(dsn, tmp_path):
    proc, url, log = run_gunicorn("right", dsn, tmp_path)
    try:
        answers = [httpx.get(url, headers={"Connection": "close"}, timeout=10).json()
                   for _ in range(6)]  # fmt: skip
    finally:
        stop(proc, log)
    assert all(a["error"] is None for a in answers)
