"""poolwatch: an observability-first PostgreSQL connection pool for psycopg 3.

Replace ``from psycopg_pool import ConnectionPool`` with ``from poolwatch import
ConnectionPool``; everything else stays as it was, and the pool now measures itself.
"""

from .errors import PoolClosed, PoolConfigError, PoolError, PoolTimeout, TooManyRequests
from .observe import MultiObserver, PoolAggregates, PoolObserver, PoolSnapshot
from .pool import (
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    ConnectionPool,
    NullConnectionPool,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "MultiObserver",
    "NullConnectionPool",
    "PoolAggregates",
    "PoolClosed",
    "PoolConfigError",
    "PoolError",
    "PoolObserver",
    "PoolSnapshot",
    "PoolTimeout",
    "TooManyRequests",
]
