"""What held connections are doing: query in flight, idle in a transaction, or idle.

Method: one sampler thread per process reads, every `SAMPLE_INTERVAL` seconds, the
checkouts of each watched pool (`BasePool.checkouts()`, a copy taken under the pool
lock) and libpq's local transaction status of each connection (no round trip, nothing
done in the holder's thread). The time since the previous sample is credited to the
status seen now. Nothing runs on the checkout path, so watching a pool leaves its
checkout cost as it is; the price is one short lock hold per pool per sample.

Accuracy: a status change is placed at the sample after it, so each change moves
at most one sample interval of time between two activities; over a checkout of a
few seconds and 10 ms samples that is well under 1%. Checkouts shorter than one
interval are credited only when a sample happens to fall inside them: in aggregate
the split is still unbiased, but the call-site table counts only checkouts that a
sample saw.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any, Final, Literal, Protocol

from psycopg.pq import TransactionStatus

from ..observe import CheckoutList
from .callsites import DEFAULT_TOP, UNKNOWN, SiteFinder, SiteTable

logger = logging.getLogger("poolwatch.insight")

Activity = Literal["query", "idle_in_transaction", "idle"]
ACTIVITIES: Final = ("query", "idle_in_transaction", "idle")
#: Seconds between two samples of the checked-out connections.
SAMPLE_INTERVAL: Final = 0.01
#: Call sites exported to Prometheus at most (the rest are summed into "(other)").
MAX_EXPORTED_SITES: Final = 20

_STATUS_ACTIVITY: Final[dict[int, Activity]] = {
    TransactionStatus.ACTIVE: "query",
    TransactionStatus.INTRANS: "idle_in_transaction",
    TransactionStatus.INERROR: "idle_in_transaction",
    TransactionStatus.IDLE: "idle",
}


class Watched(Protocol):
    """What the sampler needs from a pool (every poolwatch pool has it)."""

    name: str

    @property
    def closed(self) -> bool: ...

    def checkouts(self) -> CheckoutList: ...

    def track_call_sites(self, site_of: Any) -> None: ...


def activity_of(conn: Any) -> Activity:
    """What *conn* is doing, from libpq's local transaction status (a closed one is idle)."""
    try:
        status = conn.pgconn.transaction_status
    except Exception:  # a connection being torn down in another thread
        return "idle"
    return _STATUS_ACTIVITY.get(status, "idle")


class PoolInsight:
    """One watched pool's activity totals and call-site table, fed by the sampler."""

    def __init__(self, *, top: int = DEFAULT_TOP, export_call_sites: bool = False) -> None:
        self.table = SiteTable(top)
        self.export_call_sites = bool(export_call_sites)
        self.call_sites = False
        self._totals: dict[str, float] = dict.fromkeys(ACTIVITIES, 0.0)
        self._last_at: float | None = None
        self._last_waits = 0
        self._seen: set[tuple[int, float]] = set()

    def sample(self, now: CheckoutList) -> None:
        """Credit the time since the previous sample to what each checkout is doing now."""
        last_at = self._last_at if self._last_at is not None else now.at
        new_waits = now.waits_total - self._last_waits if self._last_at is not None else 0
        seen: set[tuple[int, float]] = set()
        credits: list[tuple[str, Activity, float, bool]] = []
        for checkout in now.checkouts:
            key = (id(checkout.connection), checkout.since)
            seen.add(key)
            elapsed = now.at - max(last_at, checkout.since)
            if elapsed < 0.0:
                elapsed = 0.0
            activity = activity_of(checkout.connection)
            credits.append((checkout.site or UNKNOWN, activity, elapsed, key not in self._seen))
        table = self.table
        with table.lock:
            totals = self._totals
            sites_holding: set[str] = set()
            for site, activity, elapsed, first in credits:
                totals[activity] += elapsed
                if not self.call_sites:
                    continue
                row = table.row(site)
                row.hold_seconds += elapsed
                if activity == "idle_in_transaction":
                    row.idle_in_transaction_seconds += elapsed
                if first:
                    row.count += 1
                sites_holding.add(site)
            if new_waits > 0:
                for site in sites_holding:
                    table.row(site).waits_caused += new_waits
            self._last_at = now.at
            self._last_waits = now.waits_total
            self._seen = seen

    def totals(self) -> dict[str, float]:
        """Seconds of checked-out time by activity since the pool was first watched."""
        with self.table.lock:
            return dict(self._totals)


class Sampler:
    """The thread that samples every watched pool. Started on demand, ends when idle."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self._pools: weakref.WeakKeyDictionary[Any, PoolInsight] = weakref.WeakKeyDictionary()
        # Pools closed for good: no longer sampled, but their totals stay readable (a
        # multiprocess state is written once more after close, and counters never go back).
        self._retired: weakref.WeakKeyDictionary[Any, PoolInsight] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, pool: Watched, insight: PoolInsight) -> None:
        with self._lock:
            self._retired.pop(pool, None)
            self._pools[pool] = insight
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="poolwatch-insight", daemon=True
                )
                self._thread.start()

    def remove(self, pool: Watched) -> None:
        with self._lock:
            self._pools.pop(pool, None)
            self._retired.pop(pool, None)

    def retire(self, pool: Watched) -> None:
        """Stop sampling *pool* (closed for good) and keep its insight readable."""
        with self._lock:
            insight = self._pools.pop(pool, None)
            if insight is not None:
                self._retired[pool] = insight

    def sampling(self, pool: Any) -> bool:
        with self._lock:
            return pool in self._pools

    def get(self, pool: Any) -> PoolInsight | None:
        with self._lock:
            found = self._pools.get(pool)
            return found if found is not None else self._retired.get(pool)

    def sample_once(self) -> int:
        """Sample every open watched pool now; return how many were sampled."""
        with self._lock:
            pools = list(self._pools.items())
        n = 0
        for pool, insight in pools:
            if pool.closed:
                if getattr(pool, "_opened", False):  # closed for good: nothing more to see
                    self.retire(pool)
                continue
            try:
                insight.sample(pool.checkouts())
            except Exception:  # one bad pool must not stop the others' sampling
                logger.exception("sampling pool %r failed", getattr(pool, "name", pool))
            n += 1
        return n

    def _run(self, stop: threading.Event) -> None:
        # Stops once no watched pool is left (they are held weakly); `add` restarts it.
        while not stop.wait(self.interval):
            with self._lock:
                if not self._pools:
                    self._thread = None
                    return
            self.sample_once()

    def _after_fork(self) -> None:
        # The thread did not survive the fork; the pools it watched are disowned there.
        self._lock = threading.Lock()
        self._thread = None
        self._pools = weakref.WeakKeyDictionary()
        self._retired = weakref.WeakKeyDictionary()


SAMPLER: Final = Sampler()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SAMPLER._after_fork)


def watch(
    pool: Watched,
    *,
    call_sites: bool = False,
    skip: Iterable[str] = (),
    top: int = DEFAULT_TOP,
    export_call_sites: bool = False,
) -> PoolInsight:
    """Start sampling what *pool*'s checked-out connections do; return its insight.

    With *call_sites*, every checkout is attributed to the code that took it (see
    `poolwatch.insight.callsites`): *skip* adds module names to treat as plumbing, *top*
    bounds the table. Every checkout then pays for a short walk up its stack, a few
    hundred nanoseconds on the fast path (see benchmarks/RESULTS.md), so it is off
    unless asked for. *export_call_sites* also exports the table to Prometheus, at
    most `MAX_EXPORTED_SITES` sites per pool.

    Watching a pool again changes its settings and keeps its totals.
    """
    if not (hasattr(pool, "checkouts") and hasattr(pool, "track_call_sites")):
        raise TypeError(f"watch() needs a poolwatch pool, got {type(pool).__name__}")
    if export_call_sites and not call_sites:
        raise ValueError("export_call_sites=True needs call_sites=True")
    if export_call_sites and isinstance(top, int) and top > MAX_EXPORTED_SITES:
        # a hard cap on the series a pool can add: (top + "(other)") x 4 families
        raise ValueError(
            f"with export_call_sites, top must be at most {MAX_EXPORTED_SITES}, got {top}"
        )
    # first, so that a pool refusing attribution (SQLAlchemy's) is left as it was
    pool.track_call_sites(SiteFinder(skip).checkout_site if call_sites else None)
    insight = SAMPLER.get(pool)
    if insight is None or insight.table.top != top:
        fresh = PoolInsight(top=top, export_call_sites=export_call_sites)
        if insight is not None:
            fresh._totals = insight.totals()
        insight = fresh
    insight.export_call_sites = bool(export_call_sites)
    insight.call_sites = bool(call_sites)
    SAMPLER.add(pool, insight)
    return insight


def ensure_watched(pool: object) -> None:
    """Watch *pool* with the defaults unless it is watched already (exporters call this).

    The activity split costs the checkout nothing, so every exported pool has it;
    call sites stay as the user set them (`watch(pool, call_sites=True)`).
    """
    watchable = hasattr(pool, "checkouts") and hasattr(pool, "track_call_sites")
    if watchable and insight_of(pool) is None:
        watch(pool)  # type: ignore[arg-type]


def unwatch(pool: Watched) -> None:
    """Stop sampling *pool* and attributing its checkouts."""
    SAMPLER.remove(pool)
    pool.track_call_sites(None)


def insight_of(pool: Any) -> PoolInsight | None:
    """The insight of a watched pool, or None."""
    return SAMPLER.get(pool)
