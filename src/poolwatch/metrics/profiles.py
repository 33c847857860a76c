"""Exposition profiles: "full" (every series of the contract) and "lean" (fewer series).

A fleet of 500 pods with two pools each pays for every per-pool series a thousand times.
The lean profile keeps every family, every alert and every dashboard panel working, and
exports far fewer series per pool (docs/fleet.md gives the counts):

- the acquire histogram sums its outcomes: the alerts and panels take quantiles and
  rates over all outcomes, and timeouts are counted by ``poolwatch_errors_total``;
- histograms keep a subset of their buckets (every kept bound is a bound of the full
  histogram, so the lean counts are exact, only coarser);
- connect errors are counted by kind without their SQLSTATE class.

The fold happens when the exposition is rendered: pools and multiprocess files keep
their full resolution, and one process can serve both profiles.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Final, Literal

from .names import BY_KEY
from .state import HistogramValue, PoolState

Profile = Literal["full", "lean"]
PROFILES: Final = ("full", "lean")

#: upper bounds kept by the lean profile (+Inf is always kept)
LEAN_BUCKETS: Final[dict[str, tuple[float, ...]]] = {
    "acquire": (1e-3, 5e-3, 25e-3, 100e-3, 500e-3, 1.0, 5.0, 30.0),
    "use": (1e-3, 10e-3, 100e-3, 1.0, 10.0, 60.0, 600.0),
    "connect": (5e-3, 25e-3, 100e-3, 500e-3, 2.5, 10.0, 30.0),
    "lifetime": (60.0, 600.0, 3600.0),
}
#: histogram families whose label values the lean profile sums away
LEAN_FOLDED_HISTOGRAMS: Final = frozenset({"acquire"})

for _key, _bounds in LEAN_BUCKETS.items():
    _missing = set(_bounds) - set(BY_KEY[_key].buckets)
    assert not _missing, f"lean bounds of {_key} not in the full histogram: {_missing}"


def rebucket(
    hist: HistogramValue, full: tuple[float, ...], kept: tuple[float, ...]
) -> HistogramValue:
    """*hist* (per-bucket counts over *full* bounds, then +Inf) over the *kept* bounds."""
    counts = [0] * (len(kept) + 1)
    target = 0
    for bound, n in zip((*full, float("inf")), hist.counts):
        while target < len(kept) and bound > kept[target]:
            target += 1
        counts[target] += n
    return HistogramValue(counts, hist.sum)


def lean(state: PoolState) -> PoolState:
    """*state* folded to the lean profile (a new state; *state* is left as it is)."""
    out = PoolState(pool=state.pool, info=state.info, live=state.live)
    for (key, values), value in state.scalars.items():
        if key == "errors":
            # (kind, sqlstate_class) -> (kind,)
            folded = (key, values[:1])
            out.scalars[folded] = out.scalars.get(folded, 0) + value
        else:
            out.scalars[(key, values)] = value
    sums: dict[tuple[str, tuple[str, ...]], list[HistogramValue]] = defaultdict(list)
    for (key, values), hist in state.histograms.items():
        kept = rebucket(hist, BY_KEY[key].buckets, LEAN_BUCKETS[key])
        sums[(key, () if key in LEAN_FOLDED_HISTOGRAMS else values)].append(kept)
    for series, parts in sums.items():
        counts = [sum(column) for column in zip(*(p.counts for p in parts))]
        out.histograms[series] = HistogramValue(counts, sum(p.sum for p in parts))
    return out


def bucket_bounds(key: str, profile: Profile) -> tuple[float, ...]:
    return LEAN_BUCKETS[key] if profile == "lean" else BY_KEY[key].buckets
