"""AsyncNullConnectionPool: one connection per request (`null_pool.py` is generated)."""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any, NoReturn, cast

from psycopg import AsyncConnection

from .._acompat import asleep
from ..abc import ACT, AsyncConnectFailedCB, AsyncConnectionCB, AsyncConninfoParam, AsyncKwargsParam
from ..errors import PoolConfigError, PoolTimeout
from ..observe import PoolObserver
from .base import Backoff, check_int
from .pool_async import AsyncConnectionPool

logger = logging.getLogger("poolwatch.pool")


class AsyncNullConnectionPool(AsyncConnectionPool[ACT]):
    """A pool that keeps no idle connection: each request opens one, each return closes it.

    It still caps concurrency at *max_size* (0: no cap) and queues requests beyond it,
    handing a returned connection straight to the next waiter; and it measures
    everything a pool measures. Arguments are those of `AsyncConnectionPool`, with
    *min_size* fixed at 0.
    """

    _FAST_PATHS = False  # connections are closed on return, never kept idle

    def __init__(
        self,
        conninfo: AsyncConninfoParam = "",
        *,
        connection_class: type[ACT] = cast(type[ACT], AsyncConnection),  # noqa: B008
        kwargs: AsyncKwargsParam | None = None,
        min_size: int = 0,  # the one default that differs from AsyncConnectionPool
        max_size: int | None = None,
        open: bool | None = None,
        configure: AsyncConnectionCB[ACT] | None = None,
        check: AsyncConnectionCB[ACT] | None = None,
        reset: AsyncConnectionCB[ACT] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: AsyncConnectFailedCB | None = None,
        num_workers: int = 3,
        leak_timeout: float | None = None,
        observer: PoolObserver | None = None,
        use_lifo: bool = False,
        **unknown: NoReturn,
    ) -> None:
        super().__init__(
            conninfo,
            connection_class=connection_class,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            open=open,
            configure=configure,
            check=check,
            reset=reset,
            name=name,
            close_returns=False,  # a connection closed by its user is gone anyway
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
            leak_timeout=leak_timeout,
            observer=observer,
            use_lifo=use_lifo,  # accepted for symmetry: a null pool keeps no idle connection
            **unknown,
        )

    def _check_size(self, min_size: int, max_size: int | None) -> tuple[int, int]:
        check_int("min_size", min_size, 0)
        if min_size != 0:
            raise PoolConfigError(f"null pools must have min_size = 0, got {min_size}")
        if max_size is None:
            max_size = 0
        check_int("max_size", max_size, 0)
        return min_size, max_size

    def _start_initial_tasks(self) -> None:
        if self.leak_timeout is not None:
            super()._start_initial_tasks()

    def _reserve_new_locked(self) -> bool:
        if self._max_size == 0 or self._nconns < self._max_size:
            self._nconns += 1
            return True
        return False

    def _grow_if_useful_locked(self) -> bool:
        return False

    def _deliver_locked(self, conn: Any, now: float) -> bool:
        # Only a waiter can take a returned connection; otherwise the caller closes it.
        if self._closed:
            return False
        while self._waiting:
            if self._waiting.popleft().assign(conn):
                self._checkout_locked(conn, now)
                conn._pool = self
                return True
        return False

    def _closes_returns_locked(self) -> bool:
        return self._closed or not self._waiting

    def _discard_reason_locked(self, conn: Any, now: float) -> str | None:
        return "close" if self._closed else None

    async def wait(self, timeout: float = 30.0) -> None:
        """Check that a connection can be opened, retrying for up to *timeout* seconds.

        The connection is closed again: a null pool keeps none.

        Raises:
            PoolTimeout: no connection could be opened in time; the pool is then closed.
        """
        self._check_usable()
        logger.info("waiting for pool %r initialization", self.name)
        deadline = monotonic() + timeout
        backoff = Backoff(timeout=timeout)
        while True:
            try:
                conn = await self._connect(timeout=max(0.001, deadline - monotonic()))
                break
            except Exception as ex:
                logger.warning("error connecting in %r: %s", self.name, ex)
                now = monotonic()
                backoff.update_delay(now)
                if now >= deadline or backoff.time_to_give_up(now):
                    await self.close()
                    raise PoolTimeout(
                        f"pool {self.name!r} initialization incomplete after {timeout} sec",
                        snapshot=self.snapshot(),
                    ) from ex
                await asleep(backoff.delay)
        with self._lock:
            self._count_closed_locked(conn, "close", monotonic())
        await self._close_connection(conn)
        self._flush_notifications()
        logger.info("pool %r is ready to use", self.name)

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change *max_size* while the pool runs (*min_size* must stay 0)."""
        min_size, max_size = self._check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        with self._lock:
            self._max_size = max_size

    async def check(self) -> None:
        """Nothing to check: a null pool holds no idle connection."""
