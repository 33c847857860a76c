"""Django 5.1+ with the poolwatch backend, against the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.db
ROOT = Path(__file__).resolve().parents[2]


def test_django_pools_with_poolwatch(pg, secret):
    parts = f"127.0.0.1 {pg.port} poolwatch {secret} postgres"
    out = subprocess.run(
        [sys.executable, "-m", "tests.integrations.django_check"],
        cwd=ROOT, env={**os.environ, "POOLWATCH_TEST_DSN_PARTS": parts},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["pool_class"] == "poolwatch.pool.pool.ConnectionPool"
    assert found["pool_name"] == "default"
    assert found["rolled_back"] is True
    assert found["used_after_close"] == 0  # every connection came back
    assert found["size"] <= found["max_size"] == 3
    # Django borrows a connection per thread and keeps it until the connection is closed:
    # the main thread and the 4 others, 5 in all (on a pool of 3, so some of them waited)
    assert found["acquired"] == 5
    assert found["exported"] is True
    assert secret not in out.stdout + out.stderr
