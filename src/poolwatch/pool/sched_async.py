"""A minimal timer for the pool's periodic work: run callbacks at given delays."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from time import monotonic

from .._acompat import ACLIENT_EXCEPTIONS, AEvent

logger = logging.getLogger("poolwatch.pool")

Action = Callable[[], Awaitable[None]]


class AsyncScheduler:
    """Runs actions at their due time, one after the other, from `run()`.

    `enter()` may be called from anywhere (it takes no await); an action of None stops
    the runner. Actions should be short: the pool's hand them to its workers.
    """

    IDLE_WAIT = 600.0

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Action | None]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wakeup = AEvent()

    def enter(self, delay: float, action: Action | None) -> None:
        """Run *action* in *delay* seconds; None stops the scheduler (after due work)."""
        entry = (monotonic() + delay, next(self._seq), action)
        with self._lock:
            heapq.heappush(self._heap, entry)
            first = self._heap[0] is entry
        if first:
            self._wakeup.set()

    async def run(self) -> None:
        while True:
            with self._lock:
                now = monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, action = heapq.heappop(self._heap)
                    wait = None
                else:
                    action = None
                    wait = self._heap[0][0] - now if self._heap else self.IDLE_WAIT
                    self._wakeup.clear()
            if wait is not None:
                await self._wakeup.wait_timeout(wait)
                continue
            if action is None:
                return
            try:
                await action()
            except ACLIENT_EXCEPTIONS as ex:
                logger.warning("scheduled task %r failed: %s: %s", action, type(ex).__name__, ex)
