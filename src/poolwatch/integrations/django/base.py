"""Django's PostgreSQL DatabaseWrapper, pooling with poolwatch (see the package docstring)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper

from ...metrics.prometheus import register
from ...pool import ConnectionPool

NO_DB_ALIAS = "__no_db__"


def _inherited(pool: object) -> bool:
    """True for a pool this process inherited across fork(): poolwatch disabled it here."""
    return getattr(pool, "_forked_from", None) is not None


class DatabaseWrapper(PostgresWrapper):  # type: ignore[misc]
    _connection_pools: dict[str, ConnectionPool[Any]] = {}

    @property
    def pool(self) -> ConnectionPool[Any] | None:
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        pools = DatabaseWrapper._connection_pools
        if _inherited(pools.get(self.alias)):
            # A forked child (Django's parallel test runner, a pre-fork server): the
            # parent's pool refuses to work here, so this process builds its own.
            pools.pop(self.alias, None)
        if self.alias not in pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            options = {} if options is True else dict(options)
            options.setdefault("name", self.alias)
            params = self.get_connection_params()
            params["autocommit"] = True  # Django sets what it needs on each checkout
            check = ConnectionPool.check_connection
            pool: ConnectionPool[Any] = ConnectionPool(
                kwargs=params,
                open=False,  # opened on first use, not while settings load
                configure=self._configure_connection,
                check=check if self.settings_dict["CONN_HEALTH_CHECKS"] else None,
                **options,
            )
            # Several threads may get here at once at start-up: the first one wins.
            if pools.setdefault(self.alias, pool) is pool:
                register(pool)
        return pools[self.alias]

    def _close(self) -> None:
        conn = getattr(self, "connection", None)  # Django's class is not typed
        if conn is not None and _inherited(getattr(conn, "_pool", None)):
            # The parent's connection, inherited across fork(): returning it would fail
            # and closing it would end the parent's session. Just forget it (psycopg
            # never closes a connection that another process opened).
            self.connection = None
            return
        super()._close()

    def close_pool(self) -> None:
        pool = self.pool
        if pool is not None:
            pool.close()
            del DatabaseWrapper._connection_pools[self.alias]
