"""Background work of the async pool, run by its workers; `tasks.py` is generated from it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any
from weakref import ref

from .base import Backoff

if TYPE_CHECKING:
    from .upkeep_async import AsyncPoolUpkeep

logger = logging.getLogger("poolwatch.pool")


class MaintenanceTask(ABC):
    """A unit of background work. It holds the pool weakly: a dropped pool stops its work."""

    def __init__(self, pool: AsyncPoolUpkeep[Any]) -> None:
        self.pool = ref(pool)

    def __repr__(self) -> str:
        pool = self.pool()
        name = repr(pool.name) if pool else "<pool is gone>"
        return f"<{type(self).__name__} {name} at 0x{id(self):x}>"

    async def run(self) -> None:
        pool = self.pool()
        if pool is None or pool.closed:
            logger.debug("task run discarded: %s", self)
            return
        await self._run(pool)

    async def tick(self) -> None:
        """Called by the scheduler when due: hand the task to a worker."""
        pool = self.pool()
        if pool is None or pool.closed:
            return
        pool.run_task(self)

    @abstractmethod
    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None: ...


class StopWorker(MaintenanceTask):
    """Tells the worker that receives it to stop."""

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        pass


class AddConnection(MaintenanceTask):
    """Open a connection for the pool, with backoff between failed attempts."""

    def __init__(
        self, pool: AsyncPoolUpkeep[Any], attempt: Backoff | None = None, growing: bool = False
    ) -> None:
        super().__init__(pool)
        self.attempt = attempt
        self.growing = growing

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        await pool._add_connection(self.attempt, growing=self.growing)


class ReturnConnection(MaintenanceTask):
    """Reset a returned connection (``reset`` callback) away from the caller's path."""

    def __init__(self, pool: AsyncPoolUpkeep[Any], conn: Any) -> None:
        super().__init__(pool)
        self.conn = conn

    async def run(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        # Runs even on a closed pool: the connection must still be accounted for and closed.
        await pool._return_connection(self.conn)

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        pass


class CloseConnection(MaintenanceTask):
    """Close a connection the pool retired, and open its replacement if asked."""

    def __init__(self, pool: AsyncPoolUpkeep[Any], conn: Any, *, replace: bool) -> None:
        super().__init__(pool)
        self.conn = conn
        self.replace = replace

    async def run(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        await pool._close_connection(self.conn)
        if self.replace and not pool.closed:
            await pool._add_connection(None)

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        pass


class ShrinkPool(MaintenanceTask):
    """Every max_idle seconds, close a connection that stayed unused."""

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        await pool.schedule_task(self, pool.max_idle)  # first, so a failure cannot stop the cycle
        await pool._shrink_pool()


class LeakScan(MaintenanceTask):
    """Periodically report checkouts that outlived leak_timeout."""

    async def _run(self, pool: AsyncPoolUpkeep[Any]) -> None:
        await pool.schedule_task(self, pool._leak_scan_interval())
        await pool._scan_leaks()
