"""The least a thread-safe pool can do per checkout, as a floor for the vs-raw rows.

A pool that counts nothing, checks nothing and never grows: an idle list under one
lock, a condition to wait on when the list is empty, and a context manager that takes
and gives back. Any pool written in Python pays at least this per query; where even
this floor stays under a goal "of raw connections", the gap is Python's (one GIL
serialising the client's work), not the features of the pool being measured.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import psycopg

NAME = "floor: minimal pool (a lock and a list)"


class MinimalPool:
    def __init__(self, dsn: str, size: int, kwargs: dict[str, Any]) -> None:
        self._idle = [psycopg.connect(dsn, **kwargs) for _ in range(size)]
        self._all = list(self._idle)
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._waiters = 0

    def connection(self) -> _Lend:
        lend: _Lend = _new_object(_Lend)  # no __init__ frame: the floor spends nothing spare
        lend._pool = self
        return lend

    def _wait_for_one(self) -> Any:
        """Only when more threads than connections (not in the vs-raw rows)."""
        with self._lock:
            while not self._idle:
                self._waiters += 1
                self._returned.wait(60)
                self._waiters -= 1
            return self._idle.pop()

    def close(self) -> None:
        for conn in self._all:
            conn.close()


_new_object = object.__new__


class _Lend:
    __slots__ = ("_conn", "_pool")
    _pool: MinimalPool
    _conn: Any

    def __enter__(self) -> Any:
        pool = self._pool
        lock = pool._lock
        lock.acquire()
        idle = pool._idle
        if idle:
            conn = idle.pop()
            lock.release()
        else:
            lock.release()
            conn = pool._wait_for_one()
        self._conn = conn
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        lock = pool._lock
        lock.acquire()
        pool._idle.append(self._conn)
        if pool._waiters:
            pool._returned.notify()
        lock.release()


class FloorPeer:
    """Shaped like peers.SyncPeer for the vs-raw rows."""

    def __init__(self, dsn: str, size: int, kwargs: dict[str, Any]) -> None:
        self.name = NAME
        self.pool = MinimalPool(dsn, size, kwargs)

    def close(self) -> None:
        self.pool.close()
