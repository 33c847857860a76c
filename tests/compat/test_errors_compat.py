"""poolwatch's errors are caught by handlers written for psycopg_pool (issue 15, item 4)."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import psycopg_pool
import pytest

import poolwatch

ERROR_NAMES = ["PoolTimeout", "PoolClosed", "TooManyRequests"]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_caught_by_psycopg_pool_handlers(name):
    ours = getattr(poolwatch, name)
    try:
        raise ours("raised by poolwatch")
    except getattr(psycopg_pool, name) as ex:
        caught = ex
    assert type(caught) is ours
    assert isinstance(caught, poolwatch.PoolError)
    assert isinstance(caught, psycopg.OperationalError)
    # psycopg_pool's other error classes do not catch it.
    for other in ERROR_NAMES:
        if other != name:
            assert not isinstance(caught, getattr(psycopg_pool, other))


@pytest.mark.db
def test_real_timeout_caught_as_psycopg_pool_timeout(dsn):
    with poolwatch.ConnectionPool(dsn, min_size=1, open=True) as pool:
        with pool.connection(timeout=20):
            with pytest.raises(psycopg_pool.PoolTimeout) as info:
                pool.getconn(timeout=0.1)
    assert isinstance(info.value, poolwatch.PoolTimeout)
    assert info.value.snapshot is not None and info.value.snapshot.used == 1


PROBE = """
import json, sys
if sys.argv[1] == "blocked":
    sys.modules["psycopg_pool"] = None  # as if it were not installed
import poolwatch
print(json.dumps({
    "psycopg_pool_loaded": bool(sys.modules.get("psycopg_pool")),
    "bases": {n: [c.__module__ + "." + c.__qualname__ for c in getattr(poolwatch, n).__mro__]
              for n in ("PoolTimeout", "PoolClosed", "TooManyRequests")},
}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_without_psycopg_pool_nothing_changes():
    found = _probe("blocked")
    assert found["psycopg_pool_loaded"] is False
    for name, mro in found["bases"].items():
        assert not any(c.startswith("psycopg_pool.") for c in mro), mro
        assert mro[:2] == [f"poolwatch.{name}", "poolwatch.PoolError"]
        assert "psycopg.OperationalError" in mro


def test_with_psycopg_pool_the_classes_are_shared():
    found = _probe("installed")
    for name, mro in found["bases"].items():
        assert f"psycopg_pool.{name}" in mro
