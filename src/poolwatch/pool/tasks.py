# GENERATED from tasks_async.py by tools/unasync.py. DO NOT EDIT.
"""Background work of the async pool, run by its workers; `tasks.py` is generated from it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any
from weakref import ref

from .base import Backoff

if TYPE_CHECKING:
    from .upkeep import PoolUpkeep

logger = logging.getLogger("poolwatch.pool")


class MaintenanceTask(ABC):
    """A unit of background work. It holds the pool weakly: a dropped pool stops its work."""

    def __init__(self, pool: PoolUpkeep[Any]) -> None:
        self.pool = ref(pool)

    def __repr__(self) -> str:
        pool = self.pool()
        name = repr(pool.name) if pool else "<pool is gone>"
        return f"<{type(self).__name__} {name} at 0x{id(self):x}>"

    def run(self) -> None:
        pool = self.pool()
        if pool is None or pool.closed:
            logger.debug("task run discarded: %s", self)
            return
        self._run(pool)

    def tick(self) -> None:
        """Called by the scheduler when due: hand the task to a worker."""
        pool = self.pool()
        if pool is None or pool.closed:
            return
        pool.run_task(self)

    @abstractmethod
    def _run(self, pool: PoolUpkeep[Any]) -> None: ...


class StopWorker(MaintenanceTask):
    """Tells the worker that receives it to stop."""

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pass


class AddConnection(MaintenanceTask):
    """Open a connection for the pool, with backoff between failed attempts."""

    def __init__(
        self, pool: PoolUpkeep[Any], attempt: Backoff | None = None, growing: bool = False
    ) -> None:
        super().__init__(pool)
        self.attempt = attempt
        self.growing = growing

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pool._add_connection(self.attempt, growing=self.growing)


class ReturnConnection(MaintenanceTask):
    """Reset a returned connection (``reset`` callback) away from the caller's path."""

    def __init__(self, pool: PoolUpkeep[Any], conn: Any) -> None:
        super().__init__(pool)
        self.conn = conn

    def run(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        # Runs even on a closed pool: the connection must still be accounted for and closed.
        pool._return_connection(self.conn)

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pass


class CloseConnection(MaintenanceTask):
    """Close a connection the pool retired, and open its replacement if asked."""

    def __init__(self, pool: PoolUpkeep[Any], conn: Any, *, replace: bool) -> None:
        super().__init__(pool)
        self.conn = conn
        self.replace = replace

    def run(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        pool._close_connection(self.conn)
        if self.replace and not pool.closed:
            pool._add_connection(None)

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pass


class ShrinkPool(MaintenanceTask):
    """Every max_idle seconds, close a connection that stayed unused."""

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pool.schedule_task(self, pool.max_idle)  # first, so a failure cannot stop the cycle
        pool._shrink_pool()


class LeakScan(MaintenanceTask):
    """Periodically report checkouts that outlived leak_timeout."""

    def _run(self, pool: PoolUpkeep[Any]) -> None:
        pool.schedule_task(self, pool._leak_scan_interval())
        pool._scan_leaks()
