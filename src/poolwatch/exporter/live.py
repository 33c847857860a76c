"""Recent history of the pools, sampled once a second, for the status page.

`/pools` gives totals since start; a person watching a pool wants "now": waits and
errors per minute, wait p95 over the last minute, and a sparkline of the last few
minutes. `LiveHistory` keeps one merged state per second (5 minutes by default) and
derives those from differences between samples.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from ..metrics.names import BY_KEY, CHECKOUT_ACTIVITIES
from ..metrics.state import HistogramValue, PoolState
from ..metrics.views import acquire_total, errors_by_kind, quantile

logger = logging.getLogger("poolwatch.exporter")

#: seconds of history kept, and the window of the per-minute figures
KEEP_SECONDS = 300
WINDOW_SECONDS = 60


def _scalar(state: PoolState, key: str, *labels: str) -> float:
    return state.scalars.get((key, labels), 0.0)


class LiveHistory:
    """Samples *read_states* every *interval* seconds on a daemon thread, once started."""

    def __init__(
        self,
        read_states: Callable[[], list[PoolState]],
        *,
        interval: float = 1.0,
        keep_seconds: int = KEEP_SECONDS,
    ) -> None:
        self.read_states = read_states
        self.interval = interval
        self.samples: deque[tuple[float, dict[str, PoolState]]] = deque(
            maxlen=max(2, int(keep_seconds / interval))
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: samples that failed (the sampler logs each, skips it and keeps sampling)
        self.sample_errors = 0

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._take()
                self._thread = threading.Thread(
                    target=self._run, name="poolwatch-live-history", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        # Stamp the sample with the middle of the read: on a busy machine reading the
        # pools can take a while, and a late stamp would understate the rates.
        before = time.monotonic()
        try:
            states = {s.pool: s for s in self.read_states()}
        except Exception:
            # One bad read (a pool in a strange state, an unreadable state file) must
            # not freeze the live view for the life of the process: skip this sample.
            self.sample_errors += 1
            logger.exception(
                "the live sampler could not read the pools (%d failures so far)", self.sample_errors
            )
            return
        self.samples.append(((before + time.monotonic()) / 2, states))

    def view(self) -> dict[str, Any]:
        """Every pool now, with per-minute rates, the last minute's wait p95 and sparklines."""
        self.ensure_started()
        now = time.monotonic()
        current = {s.pool: s for s in self.read_states()}
        samples = list(self.samples)
        pools = []
        for name, state in sorted(current.items()):
            # the oldest sample within the window that knows this pool
            base_t, base = now, None
            for t, states in samples:
                if now - t <= WINDOW_SECONDS + self.interval and name in states:
                    base_t, base = t, states[name]
                    break
            pools.append(self._pool_view(state, base, now - base_t, samples, name))
        return {
            "window_seconds": WINDOW_SECONDS,
            "sampler_errors": self.sample_errors,
            "pools": pools,
        }

    def _pool_view(
        self,
        state: PoolState,
        base: PoolState | None,
        elapsed: float,
        samples: list[tuple[float, dict[str, PoolState]]],
        name: str,
    ) -> dict[str, Any]:
        per_minute = 60.0 / elapsed if base is not None and elapsed > 0 else None
        waits_pm = errors_pm = p95 = None
        errors_pm_by_kind: dict[str, float] = {}
        if base is not None and per_minute is not None:
            waits_pm = (_scalar(state, "waits") - _scalar(base, "waits")) * per_minute
            before = errors_by_kind(base)
            for kind, value in errors_by_kind(state).items():
                delta = value - before.get(kind, 0.0)
                if delta > 0:
                    errors_pm_by_kind[kind] = delta * per_minute
            errors_pm = sum(errors_pm_by_kind.values())
            now_h, then_h = acquire_total(state), acquire_total(base)
            delta_h = HistogramValue(
                [a - b for a, b in zip(now_h.counts, then_h.counts)], now_h.sum - then_h.sum
            )
            p95 = quantile(0.95, delta_h, BY_KEY["acquire"].buckets)
        sparkline = _saturation_series(samples, name)
        recent = sparkline[-1] if sparkline and sparkline[-1] is not None else None
        view = {
            "name": name,
            # the instant value flickers with every checkout; the mean over the last
            # sample interval (from the used-seconds counter) is what a person can read
            "saturation": _scalar(state, "saturation") if recent is None else recent,
            "saturation_now": _scalar(state, "saturation"),
            "used": _scalar(state, "connections", "used"),
            "idle": _scalar(state, "connections", "idle"),
            "opening": _scalar(state, "connections", "opening"),
            "max": _scalar(state, "connections_max"),
            "waiting": _scalar(state, "pending_requests"),
            "waits_per_minute": waits_pm,
            "wait_p95_seconds": p95,
            "errors_per_minute": errors_pm,
            "errors_per_minute_by_kind": errors_pm_by_kind,
            "oldest_checkout_seconds": _scalar(state, "oldest_checkout"),
            "oldest_wait_seconds": _scalar(state, "oldest_wait"),
            "leaked": _scalar(state, "leaked"),
            "sparkline": sparkline,
        }
        view.update(_insight_view(state, base))
        return view


#: call sites shown on the status page, most hold time first
STATUS_CALLSITES = 3


def _insight_view(state: PoolState, base: PoolState | None) -> dict[str, Any]:
    """What held connections did over the window (seconds each), and the top call sites.

    Seconds since start when there is no earlier sample; None for a pool not watched.
    """
    activity: dict[str, float] | None = None
    if ("activity", (CHECKOUT_ACTIVITIES[0],)) in state.scalars:
        activity = {
            a: _scalar(state, "activity", a) - (_scalar(base, "activity", a) if base else 0.0)
            for a in CHECKOUT_ACTIVITIES
        }
    return {"activity": activity, "callsites": state.callsites[:STATUS_CALLSITES]}


def _saturation_series(
    samples: list[tuple[float, dict[str, PoolState]]], name: str
) -> list[float | None]:
    """Mean saturation between consecutive samples, from the used-seconds counter."""
    out: list[float | None] = []
    for (t0, s0), (t1, s1) in pairwise(samples):
        a, b = s0.get(name), s1.get(name)
        most = _scalar(b, "connections_max") if b else 0.0
        if a is None or b is None or not most or t1 <= t0:
            out.append(None)
            continue
        used = _scalar(b, "used_seconds") - _scalar(a, "used_seconds")
        out.append(max(0.0, min(1.0, used / (t1 - t0) / most)))
    return out
