"""Type aliases for the pool's callbacks and connection classes."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar


if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection
    from psycopg.rows import TupleRow

    from .pool.pool import ConnectionPool
    from .pool.pool_async import AsyncConnectionPool

CT = TypeVar("CT", bound="Connection[Any]", default="Connection[TupleRow]")
ACT = TypeVar("ACT", bound="AsyncConnection[Any]", default="AsyncConnection[TupleRow]")

ConnectionCB: TypeAlias = Callable[[CT], None]
AsyncConnectionCB: TypeAlias = Callable[[ACT], Awaitable[None]]

ConnectFailedCB: TypeAlias = Callable[["ConnectionPool[Any]"], None]
AsyncConnectFailedCB: TypeAlias = (
    Callable[["AsyncConnectionPool[Any]"], None]
    | Callable[["AsyncConnectionPool[Any]"], Awaitable[None]]
)

ConninfoParam: TypeAlias = str | Callable[[], str]
AsyncConninfoParam: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
KwargsParam: TypeAlias = dict[str, Any] | Callable[[], dict[str, Any]]
AsyncKwargsParam: TypeAlias = (
    dict[str, Any] | Callable[[], dict[str, Any]] | Callable[[], Awaitable[dict[str, Any]]]
)
