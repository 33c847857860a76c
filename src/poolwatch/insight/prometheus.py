"""A pool's `Window` read from a Prometheus server: `poolwatch advise --prometheus URL`.

The same figures the exporter's sampler gives, as PromQL over a window: increase()
of the counters and histograms over the last *window*, the window before it as the
baseline (``offset``), and the request counter at each *step* for burstiness. Every
instance exporting the pool is summed, then divided by the number of instances: the
advice sizes one instance's pool.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from itertools import pairwise
from typing import Any

from ..metrics.names import BY_KEY
from ..observe import USE_BUCKETS
from .model import HoldTimes
from .window import ACTIVITIES, Period, Window, dispersion

#: what --window accepts: a number and a unit (Prometheus' duration syntax, one unit)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
ACTIVITY_METRIC = "poolwatch_checkout_activity_seconds_total"


class PrometheusError(Exception):
    """Prometheus could not be asked, or did not know the pool: the message says which."""

    def __init__(self, message: str, *, unknown_pool: bool = False) -> None:
        super().__init__(message)
        self.unknown_pool = unknown_pool


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``10m`` or ``90s``; ValueError when it is not one."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 1h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Client:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as ex:
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {ex.code}") from None
        except (urllib.error.URLError, OSError) as ex:
            reason = getattr(ex, "reason", ex)
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        except ValueError:
            raise PrometheusError(f"{self.url} did not answer with Prometheus JSON") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusError(f"{self.url} did not answer with Prometheus JSON")
        return body["data"]["result"]

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        result = self._get("/api/v1/query", {"query": promql})
        out = []
        for series in result:
            value = float(series["value"][1])
            out.append((series["metric"], value if math.isfinite(value) else 0.0))
        return out

    def scalar(self, promql: str) -> float | None:
        values = self.vector(promql)
        return values[0][1] if values else None

    def series(self, promql: str, seconds: float, step: float) -> list[float]:
        end = time.time()
        params = {"query": promql, "start": str(end - seconds), "end": str(end), "step": str(step)}
        result = self._get("/api/v1/query_range", params)
        return [float(v) for _, v in result[0]["values"]] if result else []


def window_from_prometheus(
    client: Client, pool: str, window: float, *, selector: str = "", step: float = 15.0
) -> tuple[Window, int]:
    """The last *window* seconds of *pool*, per instance, and how many instances export it."""
    quoted = json.dumps(pool)  # PromQL string literals take JSON's escapes
    labels = f"pool={quoted}" + (f", {selector}" if selector else "")
    w = f"{max(1, round(window))}s"

    def increase(name: str, by: str = "", extra: str = "", offset: str = "") -> str:
        grouping = f" by ({by})" if by else ""
        return f"sum{grouping} (increase({name}{{{labels}{extra}}}[{w}]{offset}))"

    instances = client.scalar(f"count(poolwatch_connections_max{{{labels}}})")
    if not instances:
        raise PrometheusError(
            f"Prometheus at {client.url} has no pool named {pool!r}", unknown_pool=True
        )
    n = int(instances)

    def period(offset: str) -> Period:
        buckets = client.vector(increase(BY_KEY["use"].prom + "_bucket", "le", "", offset))
        cumulative = dict.fromkeys([*USE_BUCKETS, math.inf], 0.0)
        for metric, value in buckets:
            bound = float(metric.get("le", "nan"))
            if bound in cumulative:
                cumulative[bound] = value
        running = list(cumulative.values())
        counts = [max(0, round(b - a)) for a, b in zip([0.0, *running], running)]
        total = client.scalar(increase(BY_KEY["use"].prom + "_sum", offset=offset)) or 0.0
        requests = client.scalar(increase(BY_KEY["acquire"].prom + "_count", offset=offset))
        holds = HoldTimes(USE_BUCKETS, tuple(counts), total)
        return Period(window, (requests or 0.0) / n, holds)

    recent = period("")
    before = period(f" offset {w}")
    p95 = client.scalar(
        "histogram_quantile(0.95, "
        + increase(BY_KEY["acquire"].prom + "_bucket", "le", ', outcome="ok"')
        + ")"
    )
    connect = client.vector(
        increase(BY_KEY["errors"].sample_name, "sqlstate_class", ', kind="connect"')
    )
    activity = client.vector(increase(ACTIVITY_METRIC, "activity"))
    arrivals = client.series(f"sum({BY_KEY['acquire'].prom}_count{{{labels}}})", window, step)
    steps = [max(0.0, b - a) for a, b in pairwise(arrivals)]

    def total(key: str, extra: str = "") -> float:
        return client.scalar(increase(BY_KEY[key].sample_name, extra=extra)) or 0.0

    def gauge(key: str, how: str = "sum") -> float:
        return client.scalar(f"{how}({BY_KEY[key].prom}{{{labels}}})") or 0.0

    server_max = client.scalar(f"max({BY_KEY['server_max_connections'].prom}{{{labels}}})")
    result = Window(
        pool=pool,
        recent=recent,
        baseline=before if before.requests > 0 else None,
        waits=total("waits") / n,
        timeouts=(
            client.scalar(increase(BY_KEY["acquire"].prom + "_count", extra=', outcome="timeout"'))
            or 0.0
        )
        / n,
        wait_p95=p95 if p95 is not None and math.isfinite(p95) else None,
        used_seconds=total("used_seconds") / n,
        max_size=int(gauge("connections_max", "max")),
        waiting_now=gauge("pending_requests") / n,
        leaked_now=gauge("leaked"),
        connect_errors={m.get("sqlstate_class", ""): v for m, v in connect if v > 0},
        activity={a: v for m, v in activity for a in ACTIVITIES if m.get("activity") == a}
        if activity
        else None,
        server_max_connections=None if server_max is None else int(server_max),
        dispersion=dispersion(steps),
    )
    return result, n
