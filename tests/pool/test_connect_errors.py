"""Connect errors that happen outside libpq: a failing ``conninfo`` or ``kwargs`` callable
(a secrets vault, an IAM token fetch) or a ``connection_class.connect`` that raises
something of its own. Each is a connect error: counted, chained, and seen by /readyz."""

from __future__ import annotations

import httpx
import pytest
from psycopg import AsyncConnection, Connection

from poolwatch import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ..metrics.scrape import exporter

pytestmark = pytest.mark.db


class VaultDown(RuntimeError):
    pass


def _raise() -> None:
    raise VaultDown("the secrets vault did not answer")


async def _araise() -> None:
    raise VaultDown("the secrets vault did not answer")


class RaisingConnection(Connection):  # type: ignore[type-arg]
    @classmethod
    def connect(cls, *args, **kwargs):  # type: ignore[override]
        raise VaultDown("the connection factory failed")


class ARaisingConnection(AsyncConnection):  # type: ignore[type-arg]
    @classmethod
    async def connect(cls, *args, **kwargs):  # type: ignore[override]
        raise VaultDown("the connection factory failed")


def _sync_variants(dsn):
    return {
        "conninfo": {"conninfo": lambda: _raise()},
        "kwargs": {"conninfo": dsn, "kwargs": lambda: _raise()},
        "connection_class": {"conninfo": dsn, "connection_class": RaisingConnection},
    }


def _async_variants(dsn):
    return {
        "conninfo": {"conninfo": _araise},
        "kwargs": {"conninfo": dsn, "kwargs": _araise},
        "connection_class": {"conninfo": dsn, "connection_class": ARaisingConnection},
    }


def assert_reported(pool, error: PoolTimeout) -> None:
    assert isinstance(error.__cause__, VaultDown), repr(error.__cause__)
    assert pool.aggregates().errors.get(("connect", "other"), 0) >= 1
    assert pool.aggregates().connect["error"].count >= 1
    assert pool.connect_failing == "other"
    with exporter([pool]) as srv:
        r = httpx.get(srv.url + "/readyz", timeout=10)
        text = httpx.get(srv.url + "/metrics", timeout=10).text
    assert r.status_code == 503, r.text
    reason = r.json()["pools"][pool.name]["reason"]
    assert "cannot connect" in reason and "other" in reason, reason
    assert (
        f'poolwatch_errors_total{{pool="{pool.name}",kind="connect",sqlstate_class="other"}}'
        in text
    )


@pytest.mark.parametrize("where", ["conninfo", "kwargs", "connection_class"])
def test_failing_connect_inputs_are_connect_errors_sync(dsn, where):
    options = _sync_variants(dsn)[where]
    with ConnectionPool(min_size=1, max_size=1, name=f"vault-{where}", open=True, **options) as p:
        with pytest.raises(PoolTimeout) as info:
            p.getconn(timeout=1.5)
        assert_reported(p, info.value)


@pytest.mark.parametrize("where", ["conninfo", "kwargs", "connection_class"])
async def test_failing_connect_inputs_are_connect_errors_async(dsn, where):
    options = _async_variants(dsn)[where]
    async with AsyncConnectionPool(min_size=1, max_size=1, name=f"avault-{where}", **options) as p:
        with pytest.raises(PoolTimeout) as info:
            await p.getconn(timeout=1.5)
        assert_reported(p, info.value)


def test_open_wait_chains_a_failing_callable_sync():
    with pytest.raises(PoolTimeout) as info:
        with ConnectionPool(lambda: _raise(), min_size=1, open=False) as p:
            p.open(wait=True, timeout=1.5)
    assert isinstance(info.value.__cause__, VaultDown)
