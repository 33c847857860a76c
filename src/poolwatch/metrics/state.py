"""A pool's metric values as plain data, and how several of them merge into one.

`PoolState` is what every exporter renders. It is built from a live pool
(`state_of`), or read back from the JSON a worker process wrote (multiprocess
mode); `merge_states` combines states that share a pool name, whether they come
from several processes or from two pools given the same name in one process.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import unicodedata
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

from psycopg.conninfo import conninfo_to_dict

from ..insight.activity import insight_of
from ..observe import CONNECT_OUTCOMES, ERROR_KINDS, SQLSTATE_CLASSES, PoolAggregates, PoolSnapshot
from ..pool._redact import redact_message
from .names import BY_KEY, INFO_LABELS

#: (metric key, extra label values) -> value
ScalarKey = tuple[str, tuple[str, ...]]

logger = logging.getLogger("poolwatch.metrics")


class Watchable(Protocol):
    """What the exporters need from a pool (every poolwatch pool has it)."""

    name: str
    server_identity: dict[str, str] | None

    @property
    def closed(self) -> bool: ...

    def snapshot(self) -> PoolSnapshot: ...

    def aggregates(self) -> PoolAggregates: ...


class PoolSet:
    """Pools held weakly, for an exporter, and the counts of those gone.

    A registered pool that is closed, or garbage-collected, leaves its counters and
    histograms behind under its name (its gauges and pool_info go): a later pool of
    that name adds to them, so counters never go back for the life of the process.
    A pool dropped without a read after its last work keeps the counts last read.
    """

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[Watchable] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._tokens: weakref.WeakKeyDictionary[Watchable, int] = weakref.WeakKeyDictionary()
        # Last state read of each pool still referenced (a closed pool's is final).
        self._last: dict[int, PoolState] = {}
        # Counts of the pools garbage-collected, merged by name, oldest name first.
        self._retired: list[PoolState] = []
        self._warned_names = False

    def add(self, pool: Watchable) -> None:
        with self._lock:
            self._pools.add(pool)
            self._tokens.setdefault(pool, next(self._ids))

    def remove(self, pool: Watchable) -> None:
        with self._lock:
            self._pools.discard(pool)
            token = self._tokens.pop(pool, None)
            if token is not None:
                self._last.pop(token, None)  # unregistered: its series end, counts and all

    def pools(self) -> list[Watchable]:
        """The pools, open or not."""
        with self._lock:
            return list(self._pools)

    def open_states(self) -> list[PoolState]:
        """One state per pool name: open pools' values plus closed pools' counts."""
        with self._lock:
            pools = [(p, self._tokens.setdefault(p, next(self._ids))) for p in self._pools]
        fresh: dict[int, PoolState] = {}
        for pool, token in pools:
            closed = pool.closed  # read first: a state taken after close() is final
            state = state_of(pool)
            state.live = not closed
            if closed and not has_activity(state):
                continue  # never opened (yet): nothing to count
            fresh[token] = state
        with self._lock:
            self._last.update(fresh)
            registered = set(self._tokens.values())
            gone = [t for t in self._last if t not in registered]
            if gone:
                dead = [self._last.pop(t) for t in gone]
                self._retired = self._bounded(retired_merge([*self._retired, *dead]))
            current = list(self._last.values())
            retired = list(self._retired)
        finished = [s for s in current if not s.live]
        return merge_states(
            [*(s for s in current if s.live), *retired_merge([*retired, *finished])]
        )

    def _bounded(self, retired: list[PoolState]) -> list[PoolState]:
        """At most MAX_RETIRED_NAMES names gone, the oldest forgotten (as in multiprocess)."""
        from .multiprocess import MAX_RETIRED_NAMES

        excess = len(retired) - MAX_RETIRED_NAMES
        if excess <= 0:
            return retired
        if not self._warned_names:
            self._warned_names = True
            logger.warning(
                "more than %d garbage-collected pool names: the oldest are forgotten and"
                " their series end; name your pools (a fixed set of names) to keep them",
                MAX_RETIRED_NAMES,
            )
        return retired[excess:]  # retired_merge keeps first-seen order


@dataclass
class HistogramValue:
    """Per-bucket counts (not cumulative; the last is +Inf) and the sum."""

    counts: list[int]
    sum: float

    def cumulative(self) -> list[int]:
        return list(accumulate(self.counts))


@dataclass
class PoolState:
    pool: str
    info: dict[str, str]
    scalars: dict[ScalarKey, float] = field(default_factory=dict)
    histograms: dict[ScalarKey, HistogramValue] = field(default_factory=dict)
    #: False for a state read from a process that has exited: only counters count then
    live: bool = True
    #: The pool's `connect_failing` (SQLSTATE class) when it has no connection: readiness
    connect_failing: str | None = None
    #: The call-site table (`poolwatch.insight.callsites.SiteRow.view()` rows), when the
    #: pool is watched with call sites on; this process only (not in state files)
    callsites: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The state as written to a multiprocess state file (see multiprocess_files)."""
        return {
            "pool": self.pool,
            "info": self.info,
            "live": self.live,
            "connect_failing": self.connect_failing,
            "scalars": [[k, list(lv), v] for (k, lv), v in self.scalars.items()],
            "histograms": [
                [k, list(lv), h.counts, h.sum] for (k, lv), h in self.histograms.items()
            ],
        }


# Label sets shown even before anything was observed, so that increase() and
# rate() see the first event (a series that appears at 1 shows no increase).
_ALWAYS_ACQUIRE = ("ok", "timeout")
_ERROR_SERIES = [(k, "") for k in ERROR_KINDS if k != "connect"] + [
    ("connect", c) for c in SQLSTATE_CLASSES if c
]


#: Longest label value exported; longer configuration values are cut, keeping a hash.
MAX_LABEL_LENGTH = 128


def bounded(value: str) -> str:
    """*value*, or for a value over MAX_LABEL_LENGTH its start plus a short hash of it.

    The hash keeps two long names that share a prefix apart.
    """
    if len(value) <= MAX_LABEL_LENGTH:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{value[: MAX_LABEL_LENGTH - 11]}~{digest}"


def _info_value(value: str) -> str:
    """A pool_info label value: bounded, control characters shown as "?".

    They come from the server and the conninfo (a database may be named with a tab
    in it); as in pool names, control characters are kept out of labels, logs and
    the state files, whose readers refuse them.
    """
    return bounded("".join("?" if unicodedata.category(c) == "Cc" else c for c in value))


def identity_of(pool: Watchable) -> dict[str, str]:
    """The pool_info labels: from the first connection, else from the conninfo string."""
    if pool.server_identity:
        return {k: _info_value(v) for k, v in pool.server_identity.items()}
    info = dict.fromkeys(INFO_LABELS, "")
    conninfo = getattr(pool, "conninfo", None)
    if isinstance(conninfo, str):
        try:
            params = conninfo_to_dict(conninfo)
        except Exception:
            params = {}
        for name in ("host", "port", "dbname", "application_name"):
            value = params.get(name)
            if value is not None:
                # A malformed URI puts part of the password in "host", and dbname may
                # hold a whole connection string: mask what came from a secret.
                info[name] = _info_value(redact_message(str(value), conninfo))
    return info


def state_of(pool: Watchable) -> PoolState:
    """Read a live pool: one snapshot and one copy of its aggregates."""
    snap = pool.snapshot()
    agg = pool.aggregates()
    state = PoolState(pool=bounded(pool.name), info=identity_of(pool))
    failing = getattr(pool, "connect_failing", None)
    state.connect_failing = failing if isinstance(failing, str) else None
    s = state.scalars
    s[("connections", ("idle",))] = snap.idle
    s[("connections", ("used",))] = snap.used
    s[("connections", ("opening",))] = snap.opening
    s[("connections_max", ())] = snap.max_size
    s[("connections_min", ())] = snap.min_size
    s[("pending_requests", ())] = snap.waiting
    s[("saturation", ())] = snap.saturation
    s[("used_seconds", ())] = snap.used_seconds_total
    s[("waits", ())] = agg.waits
    s[("leaked", ())] = snap.leaked
    s[("oldest_checkout", ())] = snap.oldest_checkout_seconds
    s[("oldest_wait", ())] = snap.oldest_wait_seconds
    if snap.server_max_connections is not None:
        s[("server_max_connections", ())] = snap.server_max_connections
    for kind_class in _ERROR_SERIES:
        s[("errors", kind_class)] = 0
    for kind_class, n in agg.errors.items():
        s[("errors", kind_class)] = n
    _add_insight(state, pool)

    # `aggregates()` returned a private copy: its count lists can be taken as they are.
    h = state.histograms
    for outcome, hist in agg.acquire.items():
        if outcome in _ALWAYS_ACQUIRE or hist.count:
            h[("acquire", (outcome,))] = HistogramValue(hist.counts, hist.sum)
    h[("use", ())] = HistogramValue(agg.use.counts, agg.use.sum)
    for outcome in CONNECT_OUTCOMES:
        hist = agg.connect[outcome]
        h[("connect", (outcome,))] = HistogramValue(hist.counts, hist.sum)
    # Every reason from the first scrape, zeros included: a family or series that
    # appears only once something happens hides that first event from rate().
    for reason, hist in agg.lifetime.items():
        h[("lifetime", (reason,))] = HistogramValue(hist.counts, hist.sum)
    return state


# the call-site counters exported (opt-in) and the table column each one reads
_CALLSITE_SERIES = (
    ("callsite_hold", "hold_seconds"),
    ("callsite_idle_in_transaction", "idle_in_transaction_seconds"),
    ("callsite_checkouts", "count"),
    ("callsite_waits_caused", "waits_caused"),
)


def _add_insight(state: PoolState, pool: Watchable) -> None:
    """The activity split and call sites of a watched pool (`poolwatch.insight`)."""
    insight = insight_of(pool)
    if insight is None:
        return
    for activity, seconds in insight.totals().items():
        state.scalars[("activity", (activity,))] = seconds
    if not insight.call_sites:
        return
    state.callsites = [row.view() for row in insight.table.rows()]
    if insight.export_call_sites:
        for row in state.callsites:
            site = bounded(str(row["site"]))
            for key, column in _CALLSITE_SERIES:
                value = row[column]
                assert isinstance(value, int | float)
                state.scalars[(key, (site,))] = value


def _merge_callsites(into: PoolState, rows: list[dict[str, Any]]) -> None:
    by_site = {row["site"]: row for row in into.callsites}
    for row in rows:
        have = by_site.get(row["site"])
        if have is None:
            by_site[row["site"]] = dict(row)
            continue
        for _, column in _CALLSITE_SERIES:
            have[column] += row[column]
    into.callsites = sorted(by_site.values(), key=lambda r: (-r["hold_seconds"], r["site"]))


def merge_states(states: Iterable[PoolState]) -> list[PoolState]:
    """One state per pool name; counters and histograms add up, gauges follow `Metric.merge`.

    Gauges of exited processes are dropped: their connections are gone. The
    saturation ratio is recomputed from the merged used and max connections.
    """
    merged: dict[str, PoolState] = {}
    for state in states:
        into = merged.get(state.pool)
        if into is None:
            into = merged[state.pool] = PoolState(pool=state.pool, info=dict(state.info))
            into.live = state.live
        elif not any(into.info.values()):
            into.info = dict(state.info)
        into.live = into.live or state.live
        if state.live and into.connect_failing is None:
            into.connect_failing = state.connect_failing
        if state.callsites:
            _merge_callsites(into, state.callsites)
        for key, value in state.scalars.items():
            metric = BY_KEY[key[0]]
            if metric.type == "gauge" and not state.live:
                continue
            if key not in into.scalars:
                into.scalars[key] = value
            elif metric.merge == "max":
                into.scalars[key] = max(into.scalars[key], value)
            else:
                into.scalars[key] += value
        for key, hist in state.histograms.items():
            have = into.histograms.get(key)
            if have is None:
                into.histograms[key] = HistogramValue(hist.counts.copy(), hist.sum)
            else:
                have.counts = [a + b for a, b in zip(have.counts, hist.counts)]
                have.sum += hist.sum
    for state in merged.values():
        used = state.scalars.get(("connections", ("used",)))
        most = state.scalars.get(("connections_max", ()))
        if used is not None and most is not None:
            state.scalars[("saturation", ())] = used / most if most else 0.0
    return list(merged.values())


def has_activity(state: PoolState) -> bool:
    """Whether a pool counted anything yet (a pool never opened has not)."""
    if any(sum(h.counts) for h in state.histograms.values()):
        return True
    return any(v for (k, _), v in state.scalars.items() if BY_KEY[k].type == "counter")


def retired_merge(states: list[PoolState]) -> list[PoolState]:
    """Merge states of pools gone: counters and histograms only, one per name."""
    for s in states:
        s.live = False
    merged = merge_states(states)
    for s in merged:
        s.live = False
    return merged
