"""The pools: psycopg_pool-compatible classes, async sources and generated sync twins."""

from .null_pool import NullConnectionPool
from .null_pool_async import AsyncNullConnectionPool
from .pool import ConnectionPool
from .pool_async import AsyncConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
]
