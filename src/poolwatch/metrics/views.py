"""JSON views of pool states, for `/pools` and the status page.

Built from `PoolState`, so they read the same in single-process and multiprocess
mode, and can hold nothing the metrics do not: no conninfo, so no secret.
"""

from __future__ import annotations

from typing import Any

from .names import BY_KEY, CHECKOUT_ACTIVITIES
from .state import HistogramValue, PoolState


def quantile(q: float, hist: HistogramValue, bounds: tuple[float, ...]) -> float | None:
    """Estimate the *q* quantile as PromQL's histogram_quantile does (linear in a bucket).

    None when the histogram is empty. Values in the +Inf bucket report the last bound.
    """
    cumulative = hist.cumulative()
    total = cumulative[-1]
    if total == 0:
        return None
    rank = q * total
    lower_count, lower_bound = 0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= rank:
            in_bucket = count - lower_count
            if in_bucket == 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_count, lower_bound = count, bound
    return bounds[-1]


def errors_by_kind(state: PoolState) -> dict[str, float]:
    """Error events per kind, every SQLSTATE class added up."""
    out: dict[str, float] = {}
    for (key, labels), value in state.scalars.items():
        if key == "errors":
            out[labels[0]] = out.get(labels[0], 0.0) + value
    return out


def acquire_total(state: PoolState) -> HistogramValue:
    """The acquire histogram over every outcome (empty if the pool has none)."""
    hists = [h for (key, _), h in state.histograms.items() if key == "acquire"]
    if not hists:
        return HistogramValue([0] * (len(BY_KEY["acquire"].buckets) + 1), 0.0)
    counts = [sum(col) for col in zip(*(h.counts for h in hists))]
    return HistogramValue(counts, sum(h.sum for h in hists))


def _quantiles(hist: HistogramValue | None, key: str) -> dict[str, float | None]:
    bounds = BY_KEY[key].buckets
    if hist is None:
        return {"count": 0, "p50": None, "p95": None, "p99": None}
    return {
        "count": hist.cumulative()[-1],
        "p50": quantile(0.50, hist, bounds),
        "p95": quantile(0.95, hist, bounds),
        "p99": quantile(0.99, hist, bounds),
    }


def pool_view(state: PoolState) -> dict[str, Any]:
    """One pool, as `/pools` shows it. Times in seconds, ratios in 0..1."""
    s = state.scalars

    def scalar(key: str, *labels: str) -> float | None:
        return s.get((key, labels))

    errors = {kind: int(n) for kind, n in errors_by_kind(state).items() if n}
    acquire_ok = state.histograms.get(("acquire", ("ok",)))
    closes: dict[str, int] = {
        labels[0]: h.cumulative()[-1]
        for (key, labels), h in state.histograms.items()
        if key == "lifetime"
    }
    view = {
        "name": state.pool,
        "live": state.live,
        "server": state.info,
        "connections": {
            "idle": scalar("connections", "idle"),
            "used": scalar("connections", "used"),
            "opening": scalar("connections", "opening"),
            "max": scalar("connections_max"),
            "min": scalar("connections_min"),
        },
        "saturation": scalar("saturation"),
        "waiting": scalar("pending_requests"),
        "used_connection_seconds_total": scalar("used_seconds"),
        "waits_total": scalar("waits"),
        "acquire_seconds": _quantiles(acquire_ok, "acquire"),
        "requests_total": acquire_total(state).cumulative()[-1],
        "use_seconds": _quantiles(state.histograms.get(("use", ())), "use"),
        "errors_total": errors,
        "closes_total": closes,
        "leaked": scalar("leaked"),
        "oldest_checkout_seconds": scalar("oldest_checkout"),
        "oldest_wait_seconds": scalar("oldest_wait"),
        "server_max_connections": scalar("server_max_connections"),
    }
    # Present only for a watched pool (`poolwatch.insight`): absent means "not measured",
    # which the verdict must not read as "never idle".
    activity = {a: scalar("activity", a) for a in CHECKOUT_ACTIVITIES}
    if all(v is not None for v in activity.values()):
        view["activity"] = activity
    view["callsites"] = state.callsites
    return view
