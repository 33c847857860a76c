"""Django's parallel test runner (fork) on the poolwatch backend (issue 15, item 5).

The runner forks its workers after the parent opened a pooled connection. Each worker
must build a pool of its own and drop the inherited connection without returning it
to the parent's pool or closing the parent's session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.db
ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
import os
host, port, user, password, dbname = os.environ["POOLWATCH_TEST_DSN_PARTS"].split()
SECRET_KEY = "not-a-secret"
DATABASES = {"default": {
    "ENGINE": "poolwatch.integrations.django",
    "NAME": dbname, "USER": user, "PASSWORD": password, "HOST": host, "PORT": port,
    "TEST": {"NAME": "pw_parallel_" + str(os.getpid())},
    "OPTIONS": {"pool": {"min_size": 1, "max_size": 2, "timeout": 10}},
}}
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
USE_TZ = True
TEST_RUNNER = "runner.HoldingRunner"
"""

RUNNER = """
import json, os
from django.db import connection
from django.test.runner import DiscoverRunner


class HoldingRunner(DiscoverRunner):
    # The parent holds a pooled connection while the workers are forked and run.

    def run_suite(self, suite, **kwargs):
        connection.ensure_connection()
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            before = cur.fetchone()[0]
        result = super().run_suite(suite, **kwargs)
        with connection.cursor() as cur:  # the parent's session must have survived
            cur.execute("SELECT pg_backend_pid()")
            after = cur.fetchone()[0]
        with open(os.environ["POOLWATCH_TEST_REPORT"], "w") as f:
            json.dump({"parent_pid": os.getpid(), "before": before, "after": after}, f)
        return result
"""

TESTS = """
import json, os
from django.db import connection
from django.test import TestCase


def note(case):
    pool = connection.pool
    with connection.cursor() as cur:
        cur.execute("SELECT current_database(), pg_backend_pid()")
        dbname, backend = cur.fetchone()
    line = {"case": case, "pid": os.getpid(), "db": dbname, "backend": backend,
            "pool_forked_from": pool._forked_from, "pool_closed": pool.closed}
    with open(os.environ["POOLWATCH_TEST_REPORT"] + ".cases", "a") as f:
        f.write(json.dumps(line) + "\\n")


class FirstTests(TestCase):
    def test_a(self):
        note("first.a")

    def test_b(self):
        note("first.b")


class SecondTests(TestCase):
    def test_a(self):
        note("second.a")

    def test_b(self):
        note("second.b")
"""


def test_parallel_runner_forks_cleanly(pg, secret, tmp_path):
    (tmp_path / "pw_settings.py").write_text(textwrap.dedent(SETTINGS))
    (tmp_path / "runner.py").write_text(textwrap.dedent(RUNNER))
    (tmp_path / "test_things.py").write_text(textwrap.dedent(TESTS))
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        "POOLWATCH_TEST_DSN_PARTS": f"127.0.0.1 {pg.port} poolwatch {secret} postgres",
        "POOLWATCH_TEST_REPORT": str(report),
        "DJANGO_SETTINGS_MODULE": "pw_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "django", "test", "test_things", "--parallel", "2", "-v", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs
    assert "Ran 4 tests" in logs and "PoolClosed" not in logs, logs
    assert secret not in logs

    parent = json.loads(report.read_text())
    assert parent["after"] == parent["before"]  # the parent's session was left alone
    cases = [json.loads(line) for line in (tmp_path / "report.json.cases").read_text().splitlines()]
    assert sorted(c["case"] for c in cases) == ["first.a", "first.b", "second.a", "second.b"]
    for c in cases:
        assert c["pid"] != parent["parent_pid"]  # run by the forked workers
        assert c["pool_forked_from"] is None and c["pool_closed"] is False
        assert c["backend"] != parent["before"]  # never the parent's session
        assert c["db"].startswith("test_") or c["db"].startswith("pw_parallel_")
