"""What a pool did over a recent window, measured from two readings of its counters.

The verdict and the sizing advice both start here. A `Window` is built from pool
states the exporter sampled (`from_samples`), or from a Prometheus server
(`poolwatch.insight.prometheus`). Counters only ever grow, so the difference
between two readings is what happened in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..metrics.names import BY_KEY
from ..metrics.state import HistogramValue, PoolState
from ..metrics.views import acquire_total, pool_view, quantile
from .model import HoldTimes

#: the recent window the verdict and the advice describe, in seconds
WINDOW_SECONDS = 60.0
#: a baseline shorter than this says too little to call a change a spike
MIN_BASELINE_SECONDS = 10.0

ACTIVITIES = ("query", "idle_in_transaction", "idle")


@dataclass
class Period:
    """Rates over a stretch of time (the window, or the baseline before it)."""

    seconds: float
    requests: float
    holds: HoldTimes

    @property
    def arrival_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Window:
    pool: str
    recent: Period
    #: the time before the window, if the history reaches back far enough
    baseline: Period | None
    #: requests that queued, and that gave up (timeout), in the window
    waits: float
    timeouts: float
    #: measured wait p95 of the requests served in the window (None: none served)
    wait_p95: float | None
    #: connection-seconds checked out in the window
    used_seconds: float
    max_size: int
    waiting_now: float
    leaked_now: float
    #: failed connection attempts in the window, by SQLSTATE class ("" when unknown)
    connect_errors: dict[str, float] = field(default_factory=dict)
    #: checked-out seconds by what the connection was doing; None: not measured
    activity: dict[str, float] | None = None
    server_max_connections: int | None = None
    #: arrivals per interval, variance over mean (1 for a Poisson stream)
    dispersion: float = 1.0

    @property
    def saturation(self) -> float:
        seconds = self.recent.seconds
        if not seconds or not self.max_size:
            return 0.0
        # the two readings are not taken at the same instant as the counters moved
        return min(1.0, self.used_seconds / (seconds * self.max_size))

    @property
    def burst_size(self) -> float:
        """Requests arriving together: a Poisson stream of bursts of k shows dispersion k."""
        return max(1.0, self.dispersion)


def _scalar(state: PoolState, key: str, *labels: str) -> float:
    return state.scalars.get((key, labels), 0.0)


def _delta(after: HistogramValue, before: HistogramValue | None) -> HistogramValue:
    if before is None or len(before.counts) != len(after.counts):
        return HistogramValue(list(after.counts), after.sum)
    counts = [max(0, a - b) for a, b in zip(after.counts, before.counts)]
    return HistogramValue(counts, max(0.0, after.sum - before.sum))


def _empty(key: str) -> HistogramValue:
    return HistogramValue([0] * (len(BY_KEY[key].buckets) + 1), 0.0)


def _holds(after: PoolState, before: PoolState | None) -> HoldTimes:
    now = after.histograms.get(("use", ())) or _empty("use")
    then = before.histograms.get(("use", ())) if before is not None else None
    d = _delta(now, then)
    return HoldTimes(BY_KEY["use"].buckets, tuple(d.counts), d.sum)


def _period(after: PoolState, before: PoolState | None, seconds: float) -> Period:
    requests = acquire_total(after).cumulative()[-1]
    if before is not None:
        requests -= acquire_total(before).cumulative()[-1]
    return Period(seconds, max(0.0, float(requests)), _holds(after, before))


def activity_of(state: PoolState) -> dict[str, float] | None:
    """The cumulative activity split `/pools` shows for *state*, if this build measures it."""
    split: Any = pool_view(state).get("activity")
    if not isinstance(split, dict):
        return None
    return {a: float(split.get(a) or 0.0) for a in ACTIVITIES}


def _connect_errors(after: PoolState, before: PoolState | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for (key, labels), value in after.scalars.items():
        if key == "errors" and labels and labels[0] == "connect":
            then = before.scalars.get((key, labels), 0.0) if before is not None else 0.0
            if value - then > 0:
                out[labels[1] if len(labels) > 1 else ""] = value - then
    return out


def between(
    before: PoolState | None,
    after: PoolState,
    seconds: float,
    *,
    baseline: tuple[PoolState, float] | None = None,
    arrivals_per_interval: tuple[Sequence[float], Sequence[float]] = ((), ()),
    min_baseline: float = MIN_BASELINE_SECONDS,
) -> Window:
    """The window from *before* to *after* (*seconds* apart; *before* None: since start).

    *baseline* is an earlier state and its age in seconds before *before*: the rates
    then, to tell a spike or a slowdown from a pool that was always too small.
    *arrivals_per_interval* are request counts in sub-intervals and their lengths in
    seconds, for burstiness.
    A baseline shorter than *min_baseline* seconds is ignored.
    """
    acquire_ok = _delta(
        after.histograms.get(("acquire", ("ok",))) or _empty("acquire"),
        before.histograms.get(("acquire", ("ok",))) if before is not None else None,
    )
    timeouts = _delta(
        after.histograms.get(("acquire", ("timeout",))) or _empty("acquire"),
        before.histograms.get(("acquire", ("timeout",))) if before is not None else None,
    )
    activity = activity_of(after)
    if activity is not None and before is not None:
        earlier = activity_of(before) or {}
        activity = {a: max(0.0, v - earlier.get(a, 0.0)) for a, v in activity.items()}
    base = None
    if baseline is not None and before is not None and baseline[1] >= min_baseline:
        base = _period(before, baseline[0], baseline[1])
    server_max = after.scalars.get(("server_max_connections", ()))
    return Window(
        pool=after.pool,
        recent=_period(after, before, seconds),
        baseline=base,
        waits=_scalar(after, "waits") - (_scalar(before, "waits") if before else 0.0),
        timeouts=float(timeouts.cumulative()[-1]),
        wait_p95=quantile(0.95, acquire_ok, BY_KEY["acquire"].buckets),
        used_seconds=_scalar(after, "used_seconds")
        - (_scalar(before, "used_seconds") if before else 0.0),
        max_size=int(_scalar(after, "connections_max")),
        waiting_now=_scalar(after, "pending_requests"),
        leaked_now=_scalar(after, "leaked"),
        connect_errors=_connect_errors(after, before),
        activity=activity,
        server_max_connections=None if server_max is None else int(server_max),
        dispersion=dispersion(*arrivals_per_interval),
    )


def dispersion(counts: Sequence[float], seconds: Sequence[float] = ()) -> float:
    """Variance over mean of arrival counts per interval: 1 for a Poisson stream.

    *seconds* are the intervals' lengths (equal when not given): a sampler that runs
    late on a busy machine makes longer intervals with more arrivals, which is not
    burstiness, so each count is compared with what its own interval should hold
    (Pearson's statistic over its degrees of freedom). A value that noise alone
    could give a Poisson stream counts as 1: only clear bursts are modelled.
    """
    k = len(counts)
    lengths = list(seconds) if len(seconds) == k else [1.0] * k
    total, span = sum(counts), sum(lengths)
    if k < 5 or total <= 0 or span <= 0:
        return 1.0
    rate = total / span
    pearson = sum((n - rate * t) ** 2 / (rate * t) for n, t in zip(counts, lengths) if t > 0)
    value = pearson / (k - 1)
    # two standard deviations of the statistic for a Poisson stream
    return value if value > 1 + 2 * math.sqrt(2 / (k - 1)) else 1.0


def from_samples(
    samples: Sequence[tuple[float, dict[str, PoolState]]],
    current: PoolState,
    now: float,
    window_seconds: float = WINDOW_SECONDS,
) -> Window:
    """The last *window_seconds* of *current*'s pool, from the exporter's per-second samples.

    Samples older than the window make the baseline.
    """
    name = current.pool
    known = [(t, s[name]) for t, s in samples if name in s and t <= now]
    recent = [(t, s) for t, s in known if now - t <= window_seconds]
    if not recent:
        return between(None, current, 0.0)
    start_t, start = recent[0]
    older = [(t, s) for t, s in known if t < start_t]
    baseline = (older[0][1], start_t - older[0][0]) if older else None
    points = [*recent, (now, current)]
    counts = [
        acquire_total(b).cumulative()[-1] - acquire_total(a).cumulative()[-1]
        for (_, a), (_, b) in pairwise(points)
    ]
    lengths = [tb - ta for (ta, _), (tb, _) in pairwise(points)]
    return between(
        start,
        current,
        now - start_t,
        baseline=baseline,
        arrivals_per_interval=(counts, lengths),
    )
