"""The pool invariants, checked by the state machine tests and the soak script alike.

Some hold at every instant (read under the pool lock); the others hold once the
pool is at rest, when no connection is being opened, checked or reset.
`MonotonicWatch` checks that no counter or histogram bucket ever goes down.
"""

from __future__ import annotations

import threading
from typing import Any


def at_rest(pool: Any) -> bool:
    """Nothing being opened, and nothing being checked or reset outside the checkouts."""
    with pool._lock:
        opening = pool._nconns - len(pool._idle) - pool._used
        return opening == 0 and pool._transit == 0


def instant_violations(pool: Any, held: list[Any]) -> list[str]:
    """Invariants true at any moment."""
    out = []
    with pool._lock:
        snap_size, max_size = pool._nconns, pool._max_size
        used = pool._used
        idle = len(pool._idle)
        out_keys = set(map(id, pool._out))
        # A lent connection carries its pool (psycopg's connection exit and close()
        # ask for it); its entry in _out, its start time, is its lending's token.
        tokens_off = sum(1 for c in pool._out if c._pool is not pool)
    if tokens_off:
        out.append(f"{tokens_off} lent connections do not carry their pool")
    if snap_size - max_size > used:
        out.append(f"size {snap_size} > max_size {max_size} beyond the {used} checked out")
    if idle + used > snap_size:
        out.append(f"idle {idle} + used {used} > size {snap_size}")
    ids = [id(c) for c in held]
    if len(ids) != len(set(ids)):
        out.append("a connection is held by two borrowers")
    missing = [i for i in ids if i not in out_keys]
    if missing:
        out.append(f"{len(missing)} held connections are not checked out in the pool")
    return out


def at_rest_violations(pool: Any, held: list[Any], requests: int) -> list[str]:
    """Invariants true when nothing is being opened, checked or reset."""
    out = []
    with pool._lock:
        size, idle, used = pool._nconns, len(pool._idle), pool._used
        agg = pool._aggregates_locked()  # with the fast paths' deferred counts
    opening = size - idle - used
    if opening != 0:
        out.append(f"idle {idle} + used {used} + opening 0 != size {size}")
    if agg.opened - agg.closed != size:
        out.append(f"opened {agg.opened} - closed {agg.closed} != size {size}")
    outcomes = sum(h.count for h in agg.acquire.values())
    if not agg.requests == outcomes == requests:
        out.append(f"requests {requests}, counted {agg.requests}, outcomes {outcomes}")
    if used != len(held):
        out.append(f"used {used} != {len(held)} held")
    return out


# The counters of PoolAggregates, by attribute name; every histogram is checked bucket by bucket.
_COUNTERS = (
    "waits",
    "queued_wait_seconds",
    "requests",
    "request_errors",
    "returns_bad",
    "connections_lost",
    "opened",
    "closed",
)


def _counter_readings(pool: Any) -> dict[str, float]:
    """Every counter and histogram bucket of *pool*, flattened to name -> value."""
    snap = pool.snapshot()
    agg = pool.aggregates()
    out: dict[str, float] = {"used_seconds_total": snap.used_seconds_total}
    for name in _COUNTERS:
        out[name] = getattr(agg, name)
    for (kind, sqlstate_class), n in agg.errors.items():
        out[f"errors[{kind},{sqlstate_class}]"] = n
    families = {
        "acquire": agg.acquire,
        "use": {"": agg.use},
        "connect": agg.connect,
        "lifetime": agg.lifetime,
    }
    for family, hists in families.items():
        for label, hist in hists.items():
            for i, n in enumerate(hist.counts):
                out[f"{family}[{label}].bucket{i}"] = n
            out[f"{family}[{label}].sum"] = hist.sum
    return out


class MonotonicWatch:
    """Reads a pool's counters again and again; says which ever went down or vanished.

    Readers may be the test and the pool's own callbacks (in worker threads): the
    read and the comparison happen under one lock, so readings are compared in the
    order they were taken. Never call `read` with the pool lock held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self.readings = 0
        self.violations: list[str] = []

    def read(self, pool: Any, where: str) -> None:
        with self._lock:
            now = _counter_readings(pool)
            self.readings += 1
            for name, before in self._last.items():
                after = now.get(name)
                if after is None:
                    self.violations.append(f"{where}: {name} vanished (was {before})")
                elif after < before:
                    self.violations.append(f"{where}: {name} went from {before} down to {after}")
            self._last = now
