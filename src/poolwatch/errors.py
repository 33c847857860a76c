"""Exceptions raised by poolwatch pools; all of them are psycopg OperationalErrors.

When psycopg_pool is installed, `PoolTimeout`, `PoolClosed` and `TooManyRequests` also
derive from psycopg_pool's classes of the same name: code written for psycopg_pool
(``except psycopg_pool.PoolTimeout``, Django's own tests, a middleware answering 503)
keeps catching them after the switch. Without psycopg_pool nothing changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import errors as e

if TYPE_CHECKING:
    from .observe import PoolSnapshot


def _psycopg_pool_base(name: str) -> tuple[type[Exception], ...]:
    """psycopg_pool's error class *name* as an extra base, or nothing if it is absent."""
    try:
        from psycopg_pool import errors as theirs
    except ImportError:
        return ()
    base = getattr(theirs, name, None)
    return (base,) if isinstance(base, type) and issubclass(base, Exception) else ()


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


class PoolClosed(PoolError, *_psycopg_pool_base("PoolClosed")):  # type: ignore[misc]
    """The pool is closed (or not open yet), or it was inherited across `fork()`."""

    __module__ = "poolwatch"


class PoolTimeout(PoolError, *_psycopg_pool_base("PoolTimeout")):  # type: ignore[misc]
    """No connection could be handed out within the timeout.

    The message and `snapshot` carry the pool's state; if the pool could not open
    connections, the last connection error is chained as ``__cause__``.
    """

    __module__ = "poolwatch"


class TooManyRequests(PoolError, *_psycopg_pool_base("TooManyRequests")):  # type: ignore[misc]
    """The queue of waiting requests is full (see ``max_waiting``)."""

    __module__ = "poolwatch"


class PoolConfigError(ValueError, TypeError):
    """An argument given to a pool is not valid.

    It is a `ValueError` (what poolwatch promises) and also a `TypeError`, which is
    what Python and psycopg_pool raise for an unknown keyword argument.
    """

    __module__ = "poolwatch"
