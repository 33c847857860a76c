"""The right size for a pool: predictions per max_size, a recommendation and its caps.

The recommendation is the smallest size whose predicted wait p95 meets the target
with no timeouts, but never above two caps: the fleet budget (the server's
connections shared by every instance) and the database's own capacity, about
2 x cores + spindles: past its saturation point a database serves no more queries,
it just holds more of them at once. When the verdict says the pool is not the
problem (slow queries, held-idle connections, a leak, a refusing server), the advice
says so first: a bigger pool would hide the cause and add load.
"""

from __future__ import annotations

import math
import time
from collections import deque as Deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..metrics.state import PoolState
from .model import Prediction, Workload, predict
from .verdict import Verdict, judge
from .window import Window, from_samples

DEFAULT_TARGET_P95 = 0.010
#: sizes predicted when the server's max_connections is not known
DEFAULT_MAX_SIZES = 100
#: causes for which a bigger pool is not the fix
NOT_THE_POOL = {
    "slow_queries": "find and fix the slow queries first (pg_stat_statements):"
    " more connections would add load to a database that is already slower.",
    "held_idle": "end the transaction before the slow call (or move the call out of the"
    " `with pool.connection()` block): a bigger pool would only hold more connections idle.",
    "leak": "find the code that does not give its connection back (GET"
    " /pools/{name}/checkouts, leak_timeout warnings): a bigger pool only leaks longer.",
    "server_refusing": "the server refuses or cannot be reached: check the connect errors'"
    " SQLSTATE class (53: max_connections used up, 28: credentials, 08: network).",
}


@dataclass
class Options:
    target_p95: float = DEFAULT_TARGET_P95
    #: the database server's CPU cores and disks (None: unknown)
    cores: int | None = None
    spindles: int = 0
    #: app instances sharing the server's connections
    instances: int = 1
    #: the pool's timeout, in seconds (None: psycopg_pool's default, 30 s)
    timeout: float | None = None


@dataclass
class Advice:
    window: Window
    verdict: Verdict
    predictions: list[Prediction]
    recommended: int | None
    fleet_budget: int | None
    database_capacity: int | None
    options: Options
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        w = self.window
        return {
            "pool": w.pool,
            "window_seconds": w.recent.seconds,
            "measured": {
                "requests_per_second": w.recent.arrival_rate,
                "burst_size": w.burst_size,
                "hold_seconds_mean": w.recent.holds.mean,
                "holds": w.recent.holds.count,
                "max_size": w.max_size,
                "saturation": w.saturation,
                "waits": w.waits,
                "timeouts": w.timeouts,
                "wait_p95_seconds": w.wait_p95,
            },
            "verdict": self.verdict.to_json(),
            "target_wait_p95_seconds": self.options.target_p95,
            "recommended_max_size": self.recommended,
            "fleet_budget": self.fleet_budget,
            "database_capacity": self.database_capacity,
            "pool_is_the_problem": self.verdict.cause not in NOT_THE_POOL,
            "notes": self.notes,
            "sizes": [p.to_json() for p in self.predictions],
        }


def advise(window: Window, options: Options | None = None) -> Advice:
    o = options or Options()
    verdict = judge(window)
    notes: list[str] = []
    fleet = None
    if window.server_max_connections is not None:
        fleet = max(1, window.server_max_connections // max(1, o.instances))
    capacity = None if o.cores is None else 2 * o.cores + o.spindles
    if capacity is None:
        notes.append(
            "database capacity unknown: pass the server's cores (--cores, ?cores=) to cap"
            " the size at about 2 x cores + spindles."
        )
    top = fleet if fleet is not None else DEFAULT_MAX_SIZES
    if fleet is None:
        notes.append(
            f"the server's max_connections is not known yet: sizes up to {top} shown,"
            " no fleet budget applied."
        )
    workload = Workload(
        arrival_rate=window.recent.arrival_rate,
        holds=window.recent.holds,
        burst_size=window.burst_size,
        timeout=30.0 if o.timeout is None else o.timeout,
    )
    predictions = predict(workload, list(range(1, top + 1)))
    fits = [p.size for p in predictions if p.wait_p95 <= o.target_p95 and p.timeout_share == 0]
    recommended = fits[0] if fits else None
    cap = min(c for c in (fleet, capacity, top) if c is not None)
    if window.recent.holds.count == 0:
        recommended = None
        notes.insert(0, "no request finished in the window: nothing to size from yet.")
    elif recommended is None or recommended > cap:
        limit = "the fleet budget" if cap == fleet else "the database's capacity"
        notes.insert(
            0,
            f"no size up to {cap} ({limit}) meets a wait p95 of {o.target_p95 * 1000:g} ms:"
            " shorten the hold times or spread the load; the recommendation is the cap.",
        )
        recommended = cap
    if verdict.cause in NOT_THE_POOL:
        notes.insert(0, "the pool is not the problem: " + NOT_THE_POOL[verdict.cause])
    return Advice(window, verdict, predictions, recommended, fleet, capacity, o, notes)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def format_advice(data: dict[str, Any], rows: int = 12) -> str:
    """The advice (as `Advice.to_json` gives it, maybe over HTTP) for a terminal."""
    m = data["measured"]
    lines = [
        f"pool {data['pool']}: last {data['window_seconds']:.0f} s,"
        f" {m['requests_per_second']:.1f} requests/s (bursts of {m['burst_size']:.1f}),"
        f" hold time mean {_ms(m['hold_seconds_mean'])}, max_size {m['max_size']},"
        f" saturation {m['saturation']:.0%}, {m['waits']:.0f} waits,"
        f" {m['timeouts']:.0f} timeouts, wait p95 {_ms(m['wait_p95_seconds'])}",
        f"verdict: {data['verdict']['cause']}: {data['verdict']['why']}",
        "",
        f"{'max_size':>8}  {'wait p50':>10}  {'wait p95':>10}  {'wait p99':>10}"
        f"  {'saturation':>10}  {'timeouts':>8}",
    ]
    recommended = data["recommended_max_size"]
    sizes = data["sizes"]
    # the sizes where something changes: up to a few past the recommendation
    last = max(rows, (recommended or 0) + 3, m["max_size"] + 1)
    for p in sizes[:last]:
        mark = " <- recommended" if p["max_size"] == recommended else ""
        mark += " (now)" if p["max_size"] == m["max_size"] else ""
        lines.append(
            f"{p['max_size']:>8}  {_ms(p['wait_p50_seconds']):>10}"
            f"  {_ms(p['wait_p95_seconds']):>10}  {_ms(p['wait_p99_seconds']):>10}"
            f"  {p['saturation']:>10.0%}  {p['timeout_share']:>8.1%}{mark}"
        )
    if len(sizes) > last:
        lines.append(f"{'':>8}  ({len(sizes) - last} larger sizes, each waiting less)")
    lines.append("")
    target = data["target_wait_p95_seconds"] * 1000
    budget = data["fleet_budget"]
    capacity = data["database_capacity"]
    lines.append(
        f"recommended max_size: {recommended if recommended is not None else '-'}"
        f" (wait p95 target {target:g} ms; fleet budget"
        f" {budget if budget is not None else 'unknown'}; database capacity"
        f" {capacity if capacity is not None else 'unknown'})"
    )
    lines.extend(f"note: {n}" for n in data["notes"])
    return "\n".join(lines) + "\n"


class _History(Protocol):
    """The exporter's per-second samples (`poolwatch.exporter.live.LiveHistory`)."""

    samples: Deque[tuple[float, dict[str, PoolState]]]

    def ensure_started(self) -> None: ...


def windows_by_pool(history: _History, states: list[PoolState]) -> dict[str, Window]:
    """The last minute of each pool in *states*, from *history*'s samples.

    The first call starts the sampler: until it has a few seconds of samples the
    window is short, and says so in its length.
    """
    history.ensure_started()
    now = time.monotonic()
    samples = list(history.samples)
    return {s.pool: from_samples(samples, s, now) for s in states}


def advice_parameter_problem(
    target_p95: float, cores: int | None, spindles: int, instances: int
) -> str | None:
    """What is wrong with the advice's parameters, in words; None when they are usable."""
    if not (math.isfinite(target_p95) and target_p95 > 0):
        return "target_p95 must be a positive number of seconds"
    if cores is not None and cores < 1:
        return "cores must be at least 1"
    if spindles < 0:
        return "spindles must be 0 or more"
    if instances < 1:
        return "instances must be at least 1"
    return None
