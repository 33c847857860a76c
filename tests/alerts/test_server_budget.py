"""The server budget the pools export, against the server's own settings."""

from __future__ import annotations

import psycopg

from poolwatch import ConnectionPool
from poolwatch.pool.base import SERVER_BUDGET_SQL


def _settings(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT name, setting::int FROM pg_settings WHERE name IN"
            " ('max_connections', 'superuser_reserved_connections', 'reserved_connections')"
        ).fetchall()
    return dict(rows)


def test_the_budget_subtracts_every_reserved_slot_the_server_has(dsn):
    settings = _settings(dsn)
    # reserved_connections exists from PostgreSQL 16 on; older servers have no such row.
    expected = (
        settings["max_connections"]
        - settings["superuser_reserved_connections"]
        - settings.get("reserved_connections", 0)
    )
    with psycopg.connect(dsn) as conn:
        row = conn.execute(SERVER_BUDGET_SQL).fetchone()
    assert row is not None and row[0] == expected
    with ConnectionPool(dsn, min_size=1, max_size=2, name="budget") as pool:
        pool.wait(timeout=10)
        assert pool.server_max_connections == expected


def test_the_budget_query_is_not_null_on_a_server_without_reserved_connections(dsn):
    # On PostgreSQL < 16 current_setting('reserved_connections', true) is NULL: the
    # query must not turn NULL with it (the pool would export no budget at all).
    with psycopg.connect(dsn) as conn:
        version = conn.info.server_version
        missing = conn.execute("SELECT current_setting('reserved_connections', true)").fetchone()
        budget = conn.execute(SERVER_BUDGET_SQL).fetchone()
    assert budget is not None and budget[0] is not None
    if version < 160000:
        assert missing == (None,)
