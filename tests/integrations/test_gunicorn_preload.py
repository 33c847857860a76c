"""gunicorn --preload: a pool opened before fork() is refused in the workers, the recipe works."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from poolwatch.embedded import free_port

from ..alerts.stack import Process

pytestmark = [pytest.mark.db, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def gunicorn(app: str, dsn: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(url, master pid) of a gunicorn serving *app* with --preload and 2 workers."""
    port = free_port()
    proc = Process(
        [sys.executable, "-m", "gunicorn", f"tests.integrations.preload_app:{app}", "--preload",
         "--workers", "2", "--worker-class", "uvicorn_worker.UvicornWorker",
         "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"],
        tmp_path / f"{app}.log", env={**os.environ, "POOLWATCH_TEST_DSN": dsn}, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        proc.wait_http(url)
        yield url, proc.proc.pid
    finally:
        proc.stop()


def answers(url: str) -> list[dict[str, object]]:
    return [httpx.get(url, headers={"Connection": "close"}, timeout=10).json() for _ in range(6)]


def test_a_pool_inherited_through_preload_is_refused_in_workers(dsn, tmp_path):
    with gunicorn("wrong", dsn, tmp_path) as (url, master):
        replies = answers(url)
    for answer in replies:
        assert answer["error"] is not None, "a worker used the master's connections"
        assert "forked child process" in answer["error"]
        assert str(answer["pid"]) in answer["error"]  # names the worker ...
        assert str(master) in answer["error"]  # ... and the master that opened it


def test_the_recipe_works_under_preload(dsn, tmp_path):
    with gunicorn("right", dsn, tmp_path) as (url, _):
        replies = answers(url)
    assert all(a["error"] is None for a in replies)
