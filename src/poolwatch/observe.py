"""The boundary between a pool and whatever watches it: aggregates, snapshots, events.

The pool keeps its own aggregates (counters and fixed-bucket histograms), updated
under the pool lock with plain integer and float arithmetic; exporters read them at
scrape or export time. Observers receive events as they happen, for consumers that
need them one by one (tests, tracing). Nothing here imports a metrics library.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, Literal, NamedTuple

logger = logging.getLogger("poolwatch.observe")

# --- outcomes, reasons and kinds: the only values the labels may take ---

AcquireOutcome = Literal["ok", "timeout", "too_many", "closed", "cancelled", "error"]
ACQUIRE_OUTCOMES: Final = ("ok", "timeout", "too_many", "closed", "cancelled", "error")

ConnectOutcome = Literal["ok", "error"]
CONNECT_OUTCOMES: Final = ("ok", "error")

CloseReason = Literal[
    "max_lifetime", "max_idle", "broken", "check_failed", "reset_failed", "shrink", "drain", "close"
]
CLOSE_REASONS: Final = (
    "max_lifetime",
    "max_idle",
    "broken",
    "check_failed",
    "reset_failed",
    "shrink",
    "drain",
    "close",
)

ErrorKind = Literal[
    "connect",
    "timeout",
    "too_many_requests",
    "broken",
    "check_failed",
    "reset_failed",
    "rollback_on_return",
]
ERROR_KINDS: Final = (
    "connect",
    "timeout",
    "too_many_requests",
    "broken",
    "check_failed",
    "reset_failed",
    "rollback_on_return",
)

# SQLSTATE classes a connect error is filed under; "" for errors that are not connects.
SQLSTATE_CLASSES: Final = ("", "08", "28", "53", "57", "3D", "other")

# --- histogram buckets, in seconds (upper bounds, Prometheus "le" semantics) ---

#: request -> connection: resolves 50 µs, reaches past twice the default timeout (30 s).
ACQUIRE_BUCKETS: Final = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
)  # fmt: skip
#: time a connection stays checked out: 100 µs to 10 min.
USE_BUCKETS: Final = (
    100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: time to open a connection: 1 ms to 30 s.
CONNECT_BUCKETS: Final = (
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: age of a connection when it closes: 1 s to 24 h.
LIFETIME_BUCKETS: Final = (
    1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip


class Histogram:
    """A fixed-bucket histogram: ``counts[i]`` holds values <= ``bounds[i]``, the last +Inf.

    Not thread-safe by itself: the pool updates it under its lock.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: list[float]) -> None:
        """`observe()` every value of *values*, which this sorts in place.

        One sort and one bisect per bucket, both in C, instead of a bisect per value.
        """
        values.sort()
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound, below)  # values <= bound ("le")
            counts[i] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self.sum += sum(values)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts per bucket, cumulative, the last entry being the +Inf bucket."""
        return list(accumulate(self.counts))

    def copy(self) -> Histogram:
        other = Histogram(self.bounds)
        other.counts = self.counts.copy()
        other.sum = self.sum
        return other

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.sum:.6f}>"


class PoolAggregates:
    """Every counter and distribution a pool keeps. Values only ever grow.

    The pool mutates one instance under its lock; `copy()` gives readers a consistent
    view that they can take their time with.
    """

    __slots__ = (
        "acquire",
        "closed",
        "connect",
        "connections_lost",
        "errors",
        "lifetime",
        "opened",
        "queued_wait_seconds",
        "request_errors",
        "requests",
        "returns_bad",
        "use",
        "waits",
    )

    def __init__(self) -> None:
        self.acquire = {o: Histogram(ACQUIRE_BUCKETS) for o in ACQUIRE_OUTCOMES}
        self.use = Histogram(USE_BUCKETS)
        self.connect = {o: Histogram(CONNECT_BUCKETS) for o in CONNECT_OUTCOMES}
        self.lifetime = {r: Histogram(LIFETIME_BUCKETS) for r in CLOSE_REASONS}
        #: (kind, sqlstate_class) -> count
        self.errors: dict[tuple[str, str], int] = {}
        #: requests that found no idle connection and queued
        self.waits = 0
        #: total wait of the requests that queued (psycopg_pool's requests_wait_ms)
        self.queued_wait_seconds = 0.0
        #: every getconn() call, whatever its outcome
        self.requests = 0
        #: failed requests, counted as psycopg_pool counts requests_errors
        self.request_errors = 0
        self.returns_bad = 0
        self.connections_lost = 0
        #: connections opened and closed; opened - closed is the number alive
        self.opened = 0
        self.closed = 0

    def count_error(self, kind: str, sqlstate_class: str = "") -> None:
        key = (kind, sqlstate_class)
        self.errors[key] = self.errors.get(key, 0) + 1

    def copy(self) -> PoolAggregates:
        other = PoolAggregates.__new__(PoolAggregates)
        other.acquire = {k: h.copy() for k, h in self.acquire.items()}
        other.use = self.use.copy()
        other.connect = {k: h.copy() for k, h in self.connect.items()}
        other.lifetime = {k: h.copy() for k, h in self.lifetime.items()}
        other.errors = dict(self.errors)
        for name in (
            "waits",
            "queued_wait_seconds",
            "requests",
            "request_errors",
            "returns_bad",
            "connections_lost",
            "opened",
            "closed",
        ):
            setattr(other, name, getattr(self, name))
        return other


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The state of a pool at one instant, taken under the pool lock.

    ``idle + used`` equals the connections alive; ``opening`` counts connections the
    pool is trying to open (including retries waiting for their backoff).
    """

    name: str
    min_size: int
    max_size: int
    #: connections alive or being opened (psycopg_pool's ``pool_size``)
    size: int
    idle: int
    #: checked out, plus those being checked or reset on their way in or out
    used: int
    opening: int
    waiting: int
    closed: bool
    timeout: float
    #: seconds since the oldest current checkout began (0 if none)
    oldest_checkout_seconds: float
    #: seconds the oldest waiting request has waited (0 if none)
    oldest_wait_seconds: float
    #: checkouts held longer than ``leak_timeout`` (0 when leak detection is off)
    leaked: int
    leak_timeout: float | None
    #: integral of used connections over time since the pool was created
    used_seconds_total: float
    #: server max_connections - superuser_reserved_connections, once read
    server_max_connections: int | None

    @property
    def saturation(self) -> float:
        """used / max_size (0 for a pool with max_size 0)."""
        return self.used / self.max_size if self.max_size else 0.0


class Checkout(NamedTuple):
    """One connection checked out now."""

    connection: Any
    #: monotonic time it was handed out
    since: float
    #: who took it, when call-site attribution is on (`BasePool.track_call_sites`)
    site: str | None


@dataclass(frozen=True, slots=True)
class CheckoutList:
    """The checkouts of a pool at one instant (``at``, monotonic), taken under its lock."""

    at: float
    #: requests that ever queued (the waits counter) and those queued now
    waits_total: int
    waiting: int
    leak_timeout: float | None
    #: oldest first
    checkouts: tuple[Checkout, ...]


class PoolObserver:
    """Receives a pool's events. Every method is a no-op: override what you need.

    Methods are called synchronously, from whichever thread or task caused the event,
    and never under the pool lock. They must not block and must not raise (an
    exception is logged once and otherwise ignored).
    """

    def on_acquire(self, wait_seconds: float, outcome: str, queued: bool) -> None:
        """A request ended: a connection was handed out (``outcome="ok"``) or not.

        *queued* tells whether the request had to wait in the queue.
        """

    def on_release(self, use_seconds: float) -> None:
        """A connection came back after being held for *use_seconds*."""

    def on_connect(self, seconds: float, error: BaseException | None) -> None:
        """A connection attempt ended, successfully if *error* is None."""

    def on_close(self, age_seconds: float, reason: str) -> None:
        """The pool closed a connection of age *age_seconds* because of *reason*."""

    def on_error(self, kind: str, sqlstate_class: str) -> None:
        """An error of *kind* was counted."""

    def on_leak(self, held_seconds: float, stack: str) -> None:
        """A checkout outlived ``leak_timeout``; *stack* is where it was taken."""

    def close(self) -> None:
        """The pool closed: release whatever the observer holds for it."""


class MultiObserver(PoolObserver):
    """Fans events out to several observers; one failing observer disturbs no other."""

    def __init__(self, observers: Iterable[PoolObserver]) -> None:
        self.observers = tuple(observers)
        self._failed: set[tuple[int, str]] = set()

    def _each(self, method: str, *args: object) -> None:
        for obs in self.observers:
            try:
                getattr(obs, method)(*args)
            except Exception:
                key = (id(obs), method)
                if key not in self._failed:
                    self._failed.add(key)
                    logger.exception("observer %r failed in %s (logged once)", obs, method)

    def on_acquire(self, wait_seconds: float, outcome: str, queued: bool) -> None:
        self._each("on_acquire", wait_seconds, outcome, queued)

    def on_release(self, use_seconds: float) -> None:
        self._each("on_release", use_seconds)

    def on_connect(self, seconds: float, error: BaseException | None) -> None:
        self._each("on_connect", seconds, error)

    def on_close(self, age_seconds: float, reason: str) -> None:
        self._each("on_close", age_seconds, reason)

    def on_error(self, kind: str, sqlstate_class: str) -> None:
        self._each("on_error", kind, sqlstate_class)

    def on_leak(self, held_seconds: float, stack: str) -> None:
        self._each("on_leak", held_seconds, stack)

    def close(self) -> None:
        self._each("close")
