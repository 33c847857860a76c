"""A pool name is checked like every other argument: text that every output can carry.

Before, ``name=123``, bytes, a tuple or a lone surrogate were accepted and then broke
/metrics, /pools or /readyz (HTTP 500) for every pool of the exporter.
"""

from __future__ import annotations

import httpx
import pytest

from poolwatch import (
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    ConnectionPool,
    NullConnectionPool,
    PoolConfigError,
)

from ..metrics.scrape import exporter

BAD_NAMES = [
    123,
    b"pool",
    ("a", "b"),
    "\ud800",
    "lone \udfff low surrogate",
    "nul\x00byte",
    "new\nline",
    "escape\x1b[31m",
    "del\x7f",
    "c1\x85control",
    "x" * 1025,
]
POOL_CLASSES = [ConnectionPool, NullConnectionPool, AsyncConnectionPool, AsyncNullConnectionPool]


@pytest.mark.parametrize("cls", POOL_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:24])
def test_bad_name_is_refused_naming_the_argument(cls, name):
    with pytest.raises(PoolConfigError, match=r"^name must"):
        cls("host=127.0.0.1", name=name, open=False)


@pytest.mark.db
def test_unusual_but_valid_names_are_served(dsn):
    # non-ASCII, markup, quotes and a name longer than a label: all fine as text
    names = ["zürich-🐘", '<b>"quoted"</b>', "y" * 1024]
    pools = [ConnectionPool(dsn, min_size=1, name=n, open=True) for n in names]
    try:
        for p in pools:
            p.wait(timeout=60)
        with exporter(pools) as srv:
            for path in ("/metrics", "/pools", "/readyz", "/api/live"):
                r = httpx.get(srv.url + path, timeout=30)
                assert r.status_code == 200, (path, r.text[:300])
            shown = {p["name"] for p in httpx.get(srv.url + "/pools", timeout=30).json()["pools"]}
            assert {"zürich-🐘", '<b>"quoted"</b>'} <= shown
    finally:
        for p in pools:
            p.close()


def test_sqlalchemy_instrument_checks_the_name_too():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from poolwatch.integrations.sqlalchemy import SQLAlchemyPool

    engine = sqlalchemy.create_engine("postgresql+psycopg://u@127.0.0.1:1/db")
    try:
        for bad in (123, "", "\ud800", "tab\there"):
            with pytest.raises(PoolConfigError, match="name must"):
                SQLAlchemyPool(engine, bad)
    finally:
        engine.dispose()
