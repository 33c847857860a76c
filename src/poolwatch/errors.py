"""Exceptions raised by poolwatch pools; all of them are psycopg OperationalErrors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import errors as e

if TYPE_CHECKING:
    from .observe import PoolSnapshot


class PoolError(e.OperationalError):
    """Base class of the errors raised by a pool.

    It subclasses `psycopg.OperationalError`, as psycopg_pool's errors do, so that
    handlers written for psycopg_pool keep catching them.
    """

    __module__ = "poolwatch"

    #: The state of the pool when the error was raised, if it was known.
    snapshot: PoolSnapshot | None = None

    def __init__(self, msg: str = "", *, snapshot: PoolSnapshot | None = None) -> None:
        super().__init__(msg)
        self.snapshot = snapshot


class PoolClosed(PoolError):
    """The pool is closed (or not open yet), or it was inherited across `fork()`."""

    __module__ = "poolwatch"


class PoolTimeout(PoolError):
    """No connection could be handed out within the timeout.

    The message and `snapshot` carry the pool's state; if the pool could not open
    connections, the last connection error is chained as ``__cause__``.
    """

    __module__ = "poolwatch"


class TooManyRequests(PoolError):
    """The queue of waiting requests is full (see ``max_waiting``)."""

    __module__ = "poolwatch"


class PoolConfigError(ValueError, TypeError):
    """An argument given to a pool is not valid.

    It is a `ValueError` (what poolwatch promises) and also a `TypeError`, which is
    what Python and psycopg_pool raise for an unknown keyword argument.
    """

    __module__ = "poolwatch"
