"""Configuration, state and the lock-held decisions shared by every pool class; no I/O here.

Concurrency: what the design relies on (and why it holds on free-threaded CPython too).

- Every write to pool state (idle deque, `_out`, waiters, counters, histograms, the
  used-seconds parts, the hold times kept aside in `_holds`) happens under `self._lock`,
  a plain `threading.Lock`, and every reader that needs numbers that agree (`snapshot`,
  `aggregates`, `get_stats`) takes it, and folds `_holds` in first.
  Nothing written in Python depends on the GIL making a sequence of operations
  atomic, so a counter cannot lose an update under any interleaving
  (tests/pool/test_exactness.py preempts threads every microsecond and counts exactly).
- One exception, compiled: a sync pool's `connection()` blocks (`_hot.c`, see
  `_compiled`) take and give back without the lock when it is free, as one sequence
  of C calls that runs no Python code: under the GIL no other thread can run between
  them, so it acts as a critical section. It writes what the Python blocks write
  (idle deque, `_out` and its lending's token, the connection's `_pool`), except
  three things it keeps in its desk: its instant requests (`_desk.instant`), its hold
  times (counted in the desk's copy of the use histogram's buckets) and whether it
  emptied the idle list (`_desk.ran_out`), all of which `_fold_holds_locked` takes
  in. It reads `_desk.fast` for `_fast_borrow` and `_desk.surplus` for `_nconns >
  _max_size` (set by `resize()` and by every fold), and trusts the connection's
  `_expire_at` read at the take until `_desk.drains` changes (`drain()`, the only
  writer of a lent connection's `_expire_at`, adds one). It is not built on
  free-threaded CPython, where the Python blocks run.
- The claim itself needs that lock anyway (pop an idle connection and record the
  checkout as one step), so the counters ride in the same short critical section:
  per-thread or striped counters summed at scrape time would add a thread-local look-up
  to every checkout and remove no contention. The hand-off to a waiter happens in the
  returner's critical section too: the waiter wakes with its connection already
  assigned and takes the lock only to record its wait.
- Reads outside the lock are single loads of one attribute or one dict item, which are
  atomic on every CPython build: the fast-path switches (`_fast_checkout`,
  `_open_implicit`, `_reset`; `_fast_borrow`, which a `connection()` block reads under
  the lock), a connection's libpq transaction status, a `_Borrow`'s read of its
  connection's entry in `_out` (its lending's token, written under the lock, see
  `_checkout_locked`; only the owner of a lending can end it, so while the block still
  owns its connection no other thread changes it), and `waiter.conn`. `assign` sets the waiter
  settled and its connection under the pool lock, then wakes it; a waiter that reads
  no connection (it timed out first) settles under the lock, where it finds any
  connection assigned meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import threading
import traceback
import unicodedata
import weakref
from collections import deque
from collections.abc import Callable
from difflib import get_close_matches
from random import Random
from time import monotonic
from types import FrameType
from typing import Any, ClassVar

from psycopg.pq import TransactionStatus

from ..errors import PoolClosed, PoolConfigError, PoolTimeout, TooManyRequests
from ..observe import (
    Checkout,
    CheckoutList,
    MultiObserver,
    PoolAggregates,
    PoolObserver,
    PoolSnapshot,
)
from ._redact import connect_error_class

logger = logging.getLogger("poolwatch.pool")

# The pool's own random stream for jitter: drawing from the random module's shared one
# would move the application's sequence (seeded for a reproducible run, say) every time
# a connection opens. Reseeded in a forked child, as the random module's is, so that a
# fleet of forked workers does not reconnect in step.
_jitter = Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_jitter.seed)

#: The fast return folds `BasePool._holds` once it holds this many hold times, so
#: a pool nobody reads keeps a few kilobytes of them at most.
HOLDS_FOLD_AT = 1024

# Every open pool, so that a forked child can disable the ones it inherited.
_open_pools: weakref.WeakSet[BasePool] = weakref.WeakSet()


def _disable_inherited_pools() -> None:
    for pool in list(_open_pools):
        pool._disown_after_fork()
    _open_pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disable_inherited_pools)

# psycopg_pool's get_stats() keys, in the order it reports them.
_STAT_COUNTERS = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoolConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise PoolConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PoolConfigError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise PoolConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


#: Longer names are refused; metric labels are cut to 128 characters plus a hash anyway.
MAX_NAME_LENGTH = 1024


def check_name(value: object) -> str | None:
    """*value* if it is a usable pool name (or None): text that every output can carry."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PoolConfigError(f"name must be a str or None, got {type(value).__name__}")
    if len(value) > MAX_NAME_LENGTH:
        raise PoolConfigError(
            f"name must be at most {MAX_NAME_LENGTH} characters, got {len(value)}"
        )
    # lone surrogates cannot be encoded (UTF-8 exposition and JSON fail on them);
    # control characters break log lines and label values
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise PoolConfigError(
            f"name must not contain control characters or lone surrogates, got {bad!r}"
        )
    return value


def reject_unknown_arguments(cls_name: str, unknown: dict[str, Any], known: list[str]) -> None:
    if not unknown:
        return
    name = sorted(unknown)[0]
    hint = get_close_matches(name, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise PoolConfigError(f"{cls_name}() got an unknown keyword argument {name!r}{extra}")


# The pool's own machinery, left out of a borrower's stack. Not the whole package: code
# inside it that borrows connections (the demo, the integrations) is the caller.
_POOL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ACOMPAT_FILE = os.path.join(os.path.dirname(_POOL_DIR.rstrip(os.sep)), "_acompat.py")


def borrower_stack(limit: int = 16) -> traceback.StackSummary:
    """Where the current checkout is happening: the caller's frames, the pool's left out.

    Captured only when leak detection is on (it costs a few microseconds); source lines
    are looked up only if the stack is ever printed.
    """
    frames: list[tuple[FrameType, int]] = []
    frame = sys._getframe(1)
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if not (filename.startswith(_POOL_DIR) or filename == _ACOMPAT_FILE):
            frames.append((frame, frame.f_lineno))
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()  # outermost first, as tracebacks read
    return traceback.StackSummary.extract(iter(frames), lookup_lines=False)


def jitter(value: float, min_pc: float, max_pc: float) -> float:
    """*value* changed by a random fraction between *min_pc* and *max_pc*."""
    return value * (1.0 + min_pc + (max_pc - min_pc) * _jitter.random())


class Backoff:
    """Exponential backoff with jitter for a repeated attempt, giving up after *timeout*."""

    INITIAL_DELAY = 1.0
    DELAY_JITTER = 0.1
    DELAY_BACKOFF = 2.0

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self.delay = 0.0
        self.give_up_at = 0.0

    def update_delay(self, now: float) -> None:
        if self.delay == 0.0:
            self.give_up_at = now + self.timeout
            self.delay = jitter(self.INITIAL_DELAY, -self.DELAY_JITTER, self.DELAY_JITTER)
        else:
            self.delay *= self.DELAY_BACKOFF
        if now + self.delay > self.give_up_at:
            self.delay = max(0.0, self.give_up_at - now)

    def time_to_give_up(self, now: float) -> bool:
        return self.give_up_at > 0.0 and now >= self.give_up_at


#: What the server lets ordinary users open: the fleet budget the alerts compare with.
# reserved_connections (PostgreSQL 16+) holds slots back for pg_use_reserved_connections
# members; current_setting(..., true) is NULL on older servers, counted as 0.
SERVER_BUDGET_SQL = (
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true)::int, 0)"
)


def server_identity(conn: Any) -> dict[str, str]:
    """host, port, dbname, application_name and server version of a psycopg connection.

    Read from libpq's own state (no round trip): the values the connection really
    used, whatever mix of conninfo, kwargs and environment chose them.
    """
    info = conn.info
    version = info.server_version
    return {
        "host": info.host,
        "port": str(info.port),
        "dbname": info.dbname,
        "application_name": info.parameter_status("application_name") or "",
        "version": f"{version // 10000}.{version % 10000}",
    }


class BasePool:
    """What the async pool and its sync twin share: settings, state, bookkeeping.

    Every method ending in ``_locked`` must be called with ``self._lock`` held. The
    lock is a `threading.Lock` in both variants: no critical section awaits, so the
    async pool needs no asyncio lock. An async pool may lend and take back
    connections on other event loops (other threads) than its own: its waiters,
    task queue and events wake their own loop thread-safely (see `_acompat`). Only
    opening and closing must happen on the loop that runs its workers.
    """

    _ASYNC: ClassVar[bool]
    #: False for pools whose checkout or return differs from the plain one (null pools)
    _FAST_PATHS: ClassVar[bool] = True
    _names = itertools.count(1)

    def __init__(
        self,
        *,
        min_size: int,
        max_size: int | None,
        name: str | None,
        close_returns: bool,
        timeout: float,
        max_waiting: int,
        max_lifetime: float,
        max_idle: float,
        reconnect_timeout: float,
        num_workers: int,
        leak_timeout: float | None,
        observer: PoolObserver | None,
        use_lifo: bool = False,
    ) -> None:
        min_size, max_size = self._check_size(min_size, max_size)
        name = check_name(name)
        self.name = name if name else f"pool-{next(BasePool._names)}"
        self.close_returns = bool(close_returns)
        self.timeout = check_seconds("timeout", timeout)
        self.max_waiting = check_int("max_waiting", max_waiting, 0)
        self.max_lifetime = check_seconds("max_lifetime", max_lifetime)
        self.max_idle = check_seconds("max_idle", max_idle)
        self.reconnect_timeout = check_seconds(
            "reconnect_timeout", reconnect_timeout, allow_zero=True
        )
        self.num_workers = check_int("num_workers", num_workers, 1)
        self.leak_timeout = (
            None if leak_timeout is None else check_seconds("leak_timeout", leak_timeout)
        )
        if observer is not None and not isinstance(observer, PoolObserver):
            raise PoolConfigError(f"observer must be a PoolObserver, got {type(observer).__name__}")
        self._observer = None if observer is None else MultiObserver([observer])

        self._min_size = min_size
        self._max_size = max_size
        self._lock = threading.Lock()
        # Checkouts take the leftmost idle connection. Returns join on the right (FIFO,
        # psycopg_pool's order: every connection is used in turn) or, with use_lifo, on
        # the left (the warmest one is reused and surplus ones can idle out).
        if not isinstance(use_lifo, bool):
            raise PoolConfigError(f"use_lifo must be True or False, got {use_lifo!r}")
        self.use_lifo = use_lifo
        self._idle: deque[Any] = deque()
        self._idle_put = self._idle.appendleft if self.use_lifo else self._idle.append
        self._out: dict[Any, float] = {}  # checked-out connection -> checkout time
        self._waiting: deque[Any] = deque()  # Waiter/AWaiter, FIFO
        self._nconns = min_size  # alive or being opened
        # Whether a checkout emptied the idle list since the last shrink check: if not,
        # some connection stayed unused for a whole max_idle period and one can close.
        self._idle_ran_out = min_size == 0
        # Only one connection is opened at a time when growing: during a spike a
        # burst of slow connects would leave no worker free to hand returns over.
        self._growing = False
        # Used = checked out (in _out) + in transit (being reset or checked, not in _out).
        # The used-seconds counter is kept in three parts that each only ever add, so no
        # checkout, check, return, drain, resize or close can make it go backwards:
        # - _out_done: the seconds of checkouts that ended (added when one leaves _out,
        #   with a clock read under the lock, so never less than a reader already saw);
        # - the open checkouts, now - start for each entry of _out, summed when read
        #   (the fast paths only store a start time and add one float at the end);
        # - _transit_area: the integral of _transit over time until _clock, advanced
        #   by `_advance_used_locked` before _transit changes.
        # A reader still keeps the largest value it reported (`_used_reported`), so
        # float rounding between the parts cannot show as a step back either.
        self._transit = 0
        self._out_done = 0.0
        self._transit_area = 0.0
        self._clock = monotonic()  # the latest time the transit integral reached
        self._used_reported = 0.0
        # Hold times of fast returns not yet in the use histogram nor in _out_done. The
        # fast return appends one float instead of a bisect and three float additions;
        # every reader of either folds them in first, under the lock, and the return
        # that fills the list folds it (see `_fold_holds_locked`).
        self._holds: list[float] = []
        self._agg = PoolAggregates()
        self._acquire_ok = self._agg.acquire["ok"]  # the fast path's histogram
        # Requests the fast path served without waiting for the lock: each is one more
        # request and one more "ok" acquire in the first bucket with a wait of zero. One
        # increment there instead of two; `aggregates()` and the stats add it back in.
        self._instant = 0
        # A sync pool's compiled blocks (`_compiled`), None if it has none. They count
        # their instant requests in `desk.instant`, which the fold adds to _instant,
        # count their hold times in the desk's own buckets (`desk.held` of them), which
        # the fold adds to the use histogram, and read their own copy of _fast_borrow,
        # `desk.fast`.
        self._desk: Any = None
        self._stats_base: dict[str, int] = {}
        self._drained_at = 0.0
        self._last_connect_error: BaseException | None = None
        self._leak_stacks: dict[Any, traceback.StackSummary] = {}
        # Call-site attribution (off unless a watcher turns it on with `track_call_sites`):
        # the function naming the borrower's frame, and each checkout's site.
        self._site_of: Callable[[], str] | None = None
        self._sites: dict[Any, str] = {}
        self._leak_reported: set[int] = set()
        self.server_max_connections: int | None = None
        #: host, port, dbname, application_name and server version, from the first connection
        self.server_identity: dict[str, str] | None = None
        self._server_max_read = False
        self._forked_from: int | None = None
        # Observer calls decided under the lock, made by `_flush_notifications` after
        # it is released (an observer may read the pool, and the lock is not reentrant).
        self._notify_later: deque[tuple[str, tuple[Any, ...]]] = deque()

        self._opened = False
        self._closed = True
        self._open_implicit = False

    # --- configuration ---

    def _check_size(self, min_size: int, max_size: int | None) -> tuple[int, int]:
        check_int("min_size", min_size, 0)
        if max_size is None:
            max_size = min_size
        check_int("max_size", max_size, 0)
        if max_size < min_size:
            raise PoolConfigError(f"max_size ({max_size}) must be >= min_size ({min_size})")
        if max_size == 0:
            raise PoolConfigError("max_size must be > 0 (min_size and max_size are both 0)")
        return min_size, max_size

    @property
    def _closed(self) -> bool:
        return self._closed_flag

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self._closed_flag = value
        # getconn/putconn take their inlined fast paths only when nothing else (a check
        # callback, leak tracking, an observer, a closed pool) needs the general ones.
        # Call-site attribution does not: the fast paths record and forget the site.
        self._refresh_fast_paths()

    def _refresh_fast_paths(self) -> None:
        """Recompute the switches of the inlined fast paths from what they depend on.

        Called wherever one of those inputs changes, under the lock where the pool is in
        use. A switch left off by mistake only costs speed; every input that can turn
        one off (closing, a call-site finder, `wait()`) recomputes it in the same
        critical section that changes the input.
        """
        self._fast_checkout = (
            not self._closed_flag
            and self._FAST_PATHS
            and getattr(self, "_check", None) is None
            and self.leak_timeout is None
            and self._observer is None
            # async pools: not after asyncio.run() cancelled the workers (loop ending)
            and not getattr(self, "_runners_ended", False)
        )
        # connection() blocks take and give back inline (see `_Borrow`) when also
        # nothing runs on return (no reset), no checkout is named (call sites), nobody
        # waits for the pool to fill (`wait()`) and no deprecation warning is owed.
        self._fast_borrow = (
            self._fast_checkout
            and getattr(self, "_reset", None) is None
            and getattr(self, "_site_of", None) is None
            and getattr(self, "_pool_full_event", None) is None
            and not getattr(self, "_open_implicit", False)
        )
        desk = getattr(self, "_desk", None)
        if desk is not None:
            desk.fast = bool(self._fast_borrow)

    @property
    def min_size(self) -> int:
        return self._min_size

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def closed(self) -> bool:
        """True if the pool is closed (or not open yet)."""
        return self._closed

    @property
    def observer(self) -> PoolObserver | None:
        """The observer receiving this pool's events, if any."""
        return self._observer.observers[0] if self._observer else None

    def __repr__(self) -> str:
        if "_lock" not in self.__dict__:  # __init__ failed before the state existed
            return f"<{type(self).__qualname__} (not initialised) at 0x{id(self):x}>"
        s = self.snapshot()
        state = "closed" if s.closed else "open"
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r} [{state} |"
            f" size={s.size}/{s.max_size}, used={s.used}, idle={s.idle}, waiting={s.waiting}]"
            f" at 0x{id(self):x}>"
        )

    @property
    def connect_failing(self) -> str | None:
        """The SQLSTATE class of the last connect attempt if it failed, else None."""
        error = self._last_connect_error
        return None if error is None else connect_error_class(error)

    # --- reading the state ---

    def checkouts(self) -> CheckoutList:
        """The checkouts held now, oldest first, with the pool's wait counters, under the lock.

        What an outside watcher (`poolwatch.insight`) needs and nothing more: it reads
        each connection's libpq state itself, outside the lock.
        """
        with self._lock:
            sites = self._sites
            return CheckoutList(
                at=monotonic(),
                waits_total=self._agg.waits,
                waiting=len(self._waiting),
                leak_timeout=self.leak_timeout,
                checkouts=tuple(Checkout(c, t, sites.get(c)) for c, t in self._out.items()),
            )

    def track_call_sites(self, site_of: Callable[[], str] | None) -> None:
        """Name every checkout's borrower with *site_of*, called in the borrower's context.

        None turns attribution off. While it is on, *site_of* runs once per checkout,
        under the pool lock and on the fast path too: it must be cheap (the
        `poolwatch.insight.callsites.SiteFinder` caches what it learns).
        """
        with self._lock:
            self._site_of = site_of
            self._refresh_fast_paths()
            if site_of is None:
                self._sites.clear()

    def snapshot(self) -> PoolSnapshot:
        """The pool's state now, read under the lock so that the numbers agree."""
        with self._lock:
            now = monotonic()
            oldest_out = next(iter(self._out.values()), None)
            oldest_wait = self._waiting[0].started_at if self._waiting else None
            leaked = 0
            if self.leak_timeout is not None:
                limit = now - self.leak_timeout
                for t in self._out.values():  # in checkout order: stop at the first young one
                    if t > limit:
                        break
                    leaked += 1
            idle = len(self._idle)
            used = self._used
            return PoolSnapshot(
                name=self.name,
                min_size=self._min_size,
                max_size=self._max_size,
                size=self._nconns,
                idle=idle,
                used=used,
                opening=max(0, self._nconns - idle - used),
                waiting=len(self._waiting),
                closed=self._closed,
                timeout=self.timeout,
                oldest_checkout_seconds=now - oldest_out if oldest_out is not None else 0.0,
                oldest_wait_seconds=now - oldest_wait if oldest_wait is not None else 0.0,
                leaked=leaked,
                leak_timeout=self.leak_timeout,
                used_seconds_total=self._used_seconds_locked(now),
                server_max_connections=self.server_max_connections,
            )

    def aggregates(self) -> PoolAggregates:
        """A consistent copy of the pool's counters and histograms."""
        with self._lock:
            return self._aggregates_locked()

    def _aggregates_locked(self) -> PoolAggregates:
        self._fold_holds_locked()
        agg = self._agg.copy()
        agg.requests += self._instant
        agg.acquire["ok"].counts[0] += self._instant
        return agg

    def get_stats(self) -> dict[str, int]:
        """Counters and measures with psycopg_pool's keys (counters since `pop_stats`)."""
        with self._lock:
            return self._stats_locked(reset=False)

    def pop_stats(self) -> dict[str, int]:
        """Like `get_stats`, then start the counters from zero again.

        Only the values reported here restart; the metrics keep growing, as counters must.
        """
        with self._lock:
            return self._stats_locked(reset=True)

    def _stats_locked(self, reset: bool) -> dict[str, int]:
        self._fold_holds_locked()
        a = self._agg
        n_connect_ok = a.connect["ok"].count
        n_connect_err = a.connect["error"].count
        totals = {
            "requests_num": a.requests + self._instant,
            "requests_queued": a.waits,
            "requests_wait_ms": int(1000.0 * a.queued_wait_seconds),
            "requests_errors": a.request_errors,
            "usage_ms": int(1000.0 * a.use.sum),
            "returns_bad": a.returns_bad,
            "connections_num": n_connect_ok + n_connect_err,
            "connections_ms": int(1000.0 * a.connect["ok"].sum),
            "connections_errors": n_connect_err,
            "connections_lost": a.connections_lost,
        }
        # Like psycopg_pool, report a counter only once it has counted something.
        present = {
            "requests_wait_ms": a.waits,
            "usage_ms": a.use.count,
            "connections_ms": n_connect_ok,
        }
        base = self._stats_base
        rv: dict[str, int] = {}
        for key in _STAT_COUNTERS:
            value = totals[key] - base.get(key, 0)
            if value or present.get(key, 0) - base.get("#" + key, 0) > 0:
                rv[key] = value
        if reset:
            self._stats_base = dict(totals)
            self._stats_base.update({"#" + k: v for k, v in present.items()})
        rv.update(
            pool_min=self._min_size,
            pool_max=self._max_size,
            pool_size=self._nconns,
            pool_available=len(self._idle),
            requests_waiting=len(self._waiting),
        )
        return rv

    # --- lock-held bookkeeping ---

    @property
    def _used(self) -> int:
        """Connections counted as used: checked out, or being checked or reset."""
        return len(self._out) + self._transit

    def _used_seconds_locked(self, now: float) -> float:
        """Seconds connections have been used, up to *now* (read under the lock)."""
        self._fold_holds_locked()
        out = self._out
        open_seconds = now * len(out) - sum(out.values()) if out else 0.0
        transit = self._transit_area + self._transit * max(0.0, now - self._clock)
        total = self._out_done + max(0.0, open_seconds) + transit
        if total > self._used_reported:
            self._used_reported = total
        return self._used_reported

    def _fold_holds_locked(self) -> None:
        """Add the hold times the fast returns have kept (in `_holds`, and in the
        compiled blocks' desk) to the use histogram and to the seconds of ended
        checkouts, and take in the rest the desk keeps (its instant requests, whether
        it emptied the idle list). Every reader calls this first, under the lock.
        """
        holds = self._holds
        desk = self._desk
        if desk is not None:
            if desk.instant:
                self._instant += desk.instant
                desk.instant = 0
            if desk.ran_out:  # a compiled take emptied the idle list (see _shrink_pool)
                self._idle_ran_out = True
                desk.ran_out = False
            # Set by resize(); cleared here once the surplus connections are closed.
            desk.surplus = self._nconns > self._max_size
            if desk.held:  # the compiled blocks count theirs in the desk's buckets
                seconds = desk.fold_holds(self._agg.use.counts)
                self._out_done += seconds
                self._agg.use.sum += seconds
        if holds:
            self._out_done += sum(holds)
            self._agg.use.observe_all(holds)
            holds.clear()

    def _advance_used_locked(self, now: float) -> None:
        """Add the transit seconds accrued since the last change; call before _transit changes."""
        # The guard keeps the integral from ever shrinking if a caller passed a stale time.
        elapsed = now - self._clock
        if elapsed > 0.0:
            self._transit_area += self._transit * elapsed
            self._clock = now

    def _end_checkout_locked(self, t_out: float, now: float) -> None:
        """A checkout that started at *t_out* leaves _out at *now*: its seconds become final.

        Every caller reads *now* under the lock, so it is never earlier than a time a
        reader already used: the checkout's seconds only grow from what was reported.
        They equal the hold time the use histogram records for it.
        """
        self._out_done += now - t_out

    def _transit_change_locked(self, now: float, delta: int) -> None:
        """*delta* connections start (or stop) being checked or reset outside _out."""
        self._advance_used_locked(now)
        self._transit += delta

    def _take_idle_locked(self, now: float) -> Any:
        """Pop a usable idle connection, or return None; retire expired ones on the way."""
        idle = self._idle
        while idle:
            conn = idle.popleft()
            if not idle:
                self._idle_ran_out = True
            if conn._expire_at > now:
                return conn
            # psycopg_pool checks the lifetime only on return; an idle connection can
            # expire while it waits, so it is checked again before it is handed out.
            logger.info("discarding expired connection in %r", self.name)
            self._retire_locked(conn, "max_lifetime", now, replace=True)
        return None

    def _checkout_locked(self, conn: Any, now: float) -> None:
        """Mark *conn* as handed out at *now*.

        The start time, its value in `_out`, is the token of this lending: the very
        float object, which a `connection()` block keeps referenced, so no later
        lending can have it. The block compares `_out.get(conn)` with it at its end to
        learn whether its connection was given back (and maybe lent again) meanwhile.
        """
        self._out[conn] = now

    def _uncheckout_locked(self, conn: Any, now: float) -> None:
        """Undo a checkout the user never saw (the request gave up, or the check failed)."""
        t_out = self._out.pop(conn, None)
        if t_out is not None:
            self._end_checkout_locked(t_out, now)
        self._leak_stacks.pop(conn, None)
        self._sites.pop(conn, None)

    def _checkin_locked(self, conn: Any, now: float, *, still_used: bool) -> float:
        """Take *conn* off the checked-out list; return how long it was held.

        With *still_used* it keeps counting as used (it is being reset on its way back).
        """
        try:
            t_out = self._out.pop(conn)
        except KeyError:
            raise self._bad_return_error(conn) from None
        return self._checked_in_locked(conn, t_out, now, still_used=still_used)

    def _checked_in_locked(self, conn: Any, t_out: float, now: float, *, still_used: bool) -> float:
        """`_checkin_locked` after *conn* left the checked-out list (it was out since *t_out*)."""
        self._end_checkout_locked(t_out, now)
        use = now - t_out
        self._agg.use.observe(use)
        if still_used:
            self._transit_change_locked(now, +1)
        if self._sites:
            self._sites.pop(conn, None)
        if self._leak_stacks:
            self._leak_stacks.pop(conn, None)
            if id(conn) in self._leak_reported:
                self._leak_reported.discard(id(conn))
                logger.warning(
                    "connection reported as leaked was returned to %r after %.3f sec",
                    self.name,
                    use,
                )
        return use

    def _bad_return_error(self, conn: Any) -> Exception:
        if self._forked_from is not None:
            return self._forked_error()
        owner = getattr(conn, "_pool", None)
        if owner is not None and owner is not self:
            why = f"it comes from pool {getattr(owner, 'name', owner)!r}"
        elif getattr(conn, "_pw_owner", None) is not None and conn._pw_owner() is self:
            why = "it was already returned"
        else:
            why = "it doesn't come from any pool"
        return ValueError(f"can't return connection to pool {self.name!r}, {why}: {conn}")

    def _deliver_locked(self, conn: Any, now: float) -> bool:
        """Give *conn* to the first waiter, or make it idle. False if the pool is closed."""
        if self._closed:
            return False
        while self._waiting:
            if self._waiting.popleft().assign(conn):
                self._checkout_locked(conn, now)
                conn._pool = self
                return True
        conn._pool = None
        self._idle_put(conn)
        self._on_idle_added_locked()
        return True

    def _discard_reason_locked(self, conn: Any, now: float) -> str | None:
        """Why a connection coming back must not be reused, or None if it can be."""
        if self._closed:
            return "close"
        if self._nconns > self._max_size:
            return "shrink"
        if conn._created_at <= self._drained_at:
            return "drain"
        if conn._expire_at <= now:
            logger.info("discarding expired connection in %r", self.name)
            return "max_lifetime"
        return None

    def _put_back_locked(self, conn: Any, now: float, reason: str | None = None) -> bool:
        """Reuse or retire a connection that no longer counts as used.

        Returns True if the caller must close it now (the pool is closed, or it is a
        null pool with nobody waiting); otherwise a worker closes it if needed.
        """
        if reason is None:
            reason = self._discard_reason_locked(conn, now)
            if reason is None:
                if self._deliver_locked(conn, now):
                    return False
                reason = "close"
        if reason == "close" or self._closed:
            self._count_closed_locked(conn, "close" if self._closed else reason, now)
            self._nconns -= 1
            return True
        self._retire_locked(conn, reason, now, replace=reason != "shrink")
        return False

    def _on_idle_added_locked(self) -> None:
        pass

    def _retire_locked(self, conn: Any, reason: str, now: float, *, replace: bool) -> None:
        """Count *conn* as closed for *reason* and have a worker close it (and replace it)."""
        self._count_closed_locked(conn, reason, now)
        if not replace:
            self._nconns -= 1
        self._schedule_close(conn, replace=replace and not self._closed)

    def _count_closed_locked(self, conn: Any, reason: str, now: float) -> None:
        age = now - getattr(conn, "_created_at", now)
        self._agg.closed += 1
        self._agg.lifetime[reason].observe(age)
        if self._observer:
            self._notify_later.append(("on_close", (age, reason)))

    def _count_error_locked(self, kind: str, sqlstate_class: str = "") -> None:
        self._agg.count_error(kind, sqlstate_class)
        if self._observer:
            self._notify_later.append(("on_error", (kind, sqlstate_class)))

    def _flush_notifications(self) -> None:
        obs, pending = self._observer, self._notify_later
        if obs is None:
            return
        while pending:  # deque.popleft is atomic: no lock needed to drain it
            try:
                method, args = pending.popleft()
            except IndexError:
                break
            getattr(obs, method)(*args)

    def _record_acquire_locked(self, outcome: str, wait: float, *, queued: bool) -> None:
        self._agg.acquire[outcome].observe(wait)
        if queued:
            self._agg.queued_wait_seconds += wait
        if outcome != "ok" and (queued or outcome == "too_many"):
            self._agg.request_errors += 1
        if outcome == "timeout":
            self._count_error_locked("timeout")
        elif outcome == "too_many":
            self._count_error_locked("too_many_requests")

    def _enqueue_locked(self, waiter: Any) -> None:
        if self.max_waiting and len(self._waiting) >= self.max_waiting:
            raise TooManyRequests(
                f"the pool {self.name!r} has already {len(self._waiting)} requests waiting"
            )
        self._waiting.append(waiter)
        self._agg.waits += 1

    def _connected_locked(self, conn: Any, started: float, now: float) -> None:
        self._agg.opened += 1
        self._agg.connect["ok"].observe(now - started)
        self._last_connect_error = None
        conn._created_at = now
        # Up to 5% shorter, so that connections opened together do not all expire together.
        conn._expire_at = now + jitter(self.max_lifetime, -0.05, 0.0)
        conn._pw_owner = weakref.ref(self)

    def _connect_failed_locked(self, seconds: float, error: BaseException) -> None:
        self._agg.connect["error"].observe(seconds)
        self._last_connect_error = error
        self._count_error_locked("connect", connect_error_class(error))

    # --- errors carrying the pool state ---

    def _timeout_error(self, timeout: float) -> PoolTimeout:
        s = self.snapshot()
        err = PoolTimeout(
            f"couldn't get a connection from pool {self.name!r} after {timeout:.2f} sec"
            # "others": this request has already left the queue it waited in
            f" (size={s.size}/{s.max_size}, used={s.used}, idle={s.idle},"
            f" others waiting={s.waiting}, opening={s.opening})",
            snapshot=s,
        )
        cause = self._last_connect_error
        if cause is not None:
            err.__cause__ = cause
        err.__suppress_context__ = True
        return err

    def _closed_error(self) -> PoolClosed:
        if self._forked_from is not None:
            return self._forked_error()
        if self._opened:
            return PoolClosed(f"the pool {self.name!r} is already closed")
        return PoolClosed(f"the pool {self.name!r} is not open yet")

    def _forked_error(self) -> PoolClosed:
        return PoolClosed(
            f"the pool {self.name!r} was opened in process {self._forked_from} and cannot be"
            f" used in its forked child process {os.getpid()}: open a new pool in the child"
            " (for example in a post-fork hook)"
        )

    def _disown_after_fork(self) -> None:
        # The connections' sockets belong to the parent: closing them here would end
        # the parent's sessions, so they are dropped without a word to the server
        # (psycopg does not close a connection created by another process).
        self._forked_from = os.getppid()
        self._lock = threading.Lock()  # another thread may have held it at fork time
        # The desk holds the old lock: the Python blocks take the new one. What its
        # blocks counted (and their hold times) is the pool's history: kept.
        self._fold_holds_locked()
        if self._desk is not None:  # blocks made before the fork keep it: off for them
            self._desk.fast = False
        self._desk = None
        now = monotonic()
        self._advance_used_locked(now)  # what was used until now stays counted
        for t_out in self._out.values():
            self._end_checkout_locked(t_out, now)
        self._closed = True
        self._idle.clear()
        self._out.clear()
        self._waiting.clear()
        self._transit = 0
        self._nconns = 0
        self._leak_stacks.clear()
        self._sites.clear()

    # --- hooks the concrete pools provide ---

    def _note_server_identity(self, conn: Any) -> None:
        try:
            self.server_identity = server_identity(conn)
        except Exception as ex:
            logger.debug("could not read the server identity in %r: %s", self.name, ex)

    def _schedule_close(self, conn: Any, *, replace: bool) -> None:
        raise NotImplementedError

    def _register_open(self) -> None:
        _open_pools.add(self)

    def _closes_returns_locked(self) -> bool:
        """True if a connection given back is to be closed as it is, without a reset.

        Null pools close what nobody waits for, as psycopg_pool's do: rolling back or
        resetting a connection about to be closed would be wasted (and logged).
        """
        return False

    def _drop_returned_locked(self, conn: Any, now: float) -> None:
        """Count a returned connection that is closed without being reset."""
        if conn.pgconn.transaction_status == TransactionStatus.UNKNOWN:
            self._agg.returns_bad += 1
            self._count_error_locked("broken")
        self._count_closed_locked(conn, "close", now)
        self._nconns -= 1

    def _reserve_new_locked(self) -> bool:
        """Null pools open a connection per request: reserve room for one if allowed."""
        return False

    def _grow_if_useful_locked(self) -> bool:
        """Reserve a new connection if the pool may grow and nobody else is growing it."""
        if self._nconns >= self._max_size or self._growing:
            return False
        self._nconns += 1
        self._growing = True
        logger.info("growing pool %r to %s", self.name, self._nconns)
        return True

    def _leak_scan_locked(self, now: float) -> list[tuple[float, str]]:
        """Checkouts that just crossed ``leak_timeout``: (held seconds, formatted stack)."""
        assert self.leak_timeout is not None
        limit = now - self.leak_timeout
        found = []
        for conn, t in self._out.items():
            if t > limit:
                break
            if id(conn) in self._leak_reported:
                continue
            self._leak_reported.add(id(conn))
            stack = self._leak_stacks.get(conn)
            text = "".join(stack.format()) if stack else "(stack not captured)\n"
            found.append((now - t, text))
        return found
