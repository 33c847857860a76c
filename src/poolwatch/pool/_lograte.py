"""Rate limiting for the pool's repeated WARNING records.

During an outage a pool meets the same problem over and over (one failed attempt per
reconnection, one discarded connection per checkout that was in flight) and logging
each one drowns the operator. Each pool logs the first warning of a kind at once,
exactly as psycopg_pool would, then holds back further ones of that kind for an
interval and logs a single summary with their count when the interval ends. The
pool's metrics count every event regardless: only the log lines are thinned.

Only the warnings that an outage multiplies go through here: failed connection attempts
and discarded broken or closed connections. Those about a program's own mistakes (a
connection returned inside a transaction, a failing reset callback) are logged for every
event, as psycopg_pool logs them and as programs and their tests count them.

A "kind" is the message's format string, per pool: two pools never hide each other's
warnings, and different warnings (the sequence logged for one bad return) all appear.
The interval is ``POOLWATCH_WARNING_INTERVAL`` seconds (default 10; 0 logs everything),
read when a pool logs its first warning.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

INTERVAL_ENV = "POOLWATCH_WARNING_INTERVAL"
DEFAULT_INTERVAL = 10.0

logger = logging.getLogger("poolwatch.pool")


def _interval_from_env() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


@dataclass
class _Window:
    """One kind of warning: logged once at *started*, then *held* more until it ends."""

    started: float
    held: int = 0
    last_message: str = ""
    timer: threading.Timer | None = field(default=None, repr=False)


class WarningRate:
    """The rate limiter of one pool's warnings."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def warning(self, msg: str, *args: Any, stacklevel: int = 1) -> None:
        """``logger.warning(msg, *args)``, unless the same *msg* was logged in the interval."""
        # +1: the record names the pool's call site, not this method
        if self.interval <= 0:
            logger.warning(msg, *args, stacklevel=stacklevel + 1)
            return
        now = monotonic()
        with self._lock:
            window = self._windows.get(msg)
            if window is not None and now - window.started < self.interval:
                window.held += 1
                window.last_message = msg % args if args else msg
                if window.timer is None:
                    # The summary must come even if this warning never recurs.
                    delay = window.started + self.interval - now
                    window.timer = threading.Timer(delay, self._summarize, (msg, window))
                    window.timer.daemon = True
                    window.timer.start()
                return
            self._windows[msg] = _Window(started=now)
        logger.warning(msg, *args, stacklevel=stacklevel + 1)

    def flush(self) -> None:
        """Log the summaries still pending (at exit: their timers would never fire)."""
        with self._lock:
            pending = list(self._windows.items())
        for msg, window in pending:
            if window.timer is not None:
                window.timer.cancel()
            self._summarize(msg, window)

    def _summarize(self, msg: str, window: _Window) -> None:
        with self._lock:
            if self._windows.get(msg) is window:
                del self._windows[msg]  # the next one of this kind logs at once again
            held, last = window.held, window.last_message
        if held:
            logger.warning(
                "%s [and %d more like it in the last %.0f s, not logged one by one;"
                " the pool's metrics count them all]",
                last,
                held,
                self.interval,
            )


# One limiter per pool, kept beside the pool rather than in it: the pool's own classes
# need no field for it, and a pool that goes away takes its limiter with it.
_limiters: weakref.WeakKeyDictionary[Any, WarningRate] = weakref.WeakKeyDictionary()
_limiters_lock = threading.Lock()


def pool_warning(pool: Any, msg: str, *args: Any) -> None:
    """Log a WARNING for *pool* through its rate limiter."""
    with _limiters_lock:
        limiter = _limiters.get(pool)
        if limiter is None:
            limiter = _limiters[pool] = WarningRate(_interval_from_env())
    limiter.warning(msg, *args, stacklevel=2)


def flush_pool_warnings(pool: Any) -> None:
    """Log *pool*'s pending summaries now (it is closing) and forget its limiter."""
    with _limiters_lock:
        limiter = _limiters.pop(pool, None)
    if limiter is not None:
        limiter.flush()


def _forget_inherited_limiters() -> None:
    """In a forked child: the pending counts are the parent's, which reports them.

    Without this, every worker of a pre-fork server logged its parent's held-back
    count again at exit. New locks too: another thread may have held one at the fork.
    """
    global _limiters, _limiters_lock
    _limiters = weakref.WeakKeyDictionary()
    _limiters_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_limiters)


@atexit.register
def _flush_all() -> None:
    with _limiters_lock:
        limiters = list(_limiters.values())
    for limiter in limiters:
        limiter.flush()
