"""Render pool states as Prometheus text (0.0.4) or OpenMetrics 1.0, directly.

prometheus_client builds a Sample object per line and formats it generically,
which costs 50-77 ms for 100 pools. Here label prefixes and bucket bounds are
formatted once, and each line is one f-string: the same bytes, several times faster.
Tests parse both outputs with prometheus_client's own parsers to prove them valid.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import accumulate

from .names import BY_KEY, EXPORTER_METRICS, METRICS, Metric, info_sample_name
from .profiles import PROFILES, Profile, bucket_bounds, lean
from .state import PoolState

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """Go-style float formatting, as Prometheus itself writes values."""
    if type(value) is int:
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _bucket_bounds(bounds: tuple[float, ...]) -> list[str]:
    # OpenMetrics wants canonical floats for "le" ("1.0", not "1"); for bounds between
    # 1e-4 and 1e15 Python's repr writes them as Go does.
    return [repr(float(b)) for b in bounds] + ["+Inf"]


_PROFILE_BOUNDS = {
    profile: {m.key: _bucket_bounds(bucket_bounds(m.key, profile)) for m in METRICS if m.buckets}
    for profile in PROFILES
}
#: the full profile's "le" values (the prometheus_client collector path uses them too)
_BOUNDS = _PROFILE_BOUNDS["full"]


@lru_cache(maxsize=4096)
def _pair(name: str, value: str) -> str:
    return f'{name}="{escape_label(value)}"'


@lru_cache(maxsize=4096)
def _label_text(key: str, values: tuple[str, ...]) -> str:
    """The labels after ``pool``: ``,state="idle"`` (empty for none)."""
    return "".join("," + _pair(n, v) for n, v in zip(_NAMES[key], values))


def render(states: list[PoolState], *, openmetrics: bool = False, profile: Profile = "full") -> str:
    """Every family of the contract for *states*, in the chosen format and profile.

    OpenMetrics output ends without the ``# EOF`` line, so that a caller can
    append other families first; `finish` adds it.
    """
    lines: dict[str, list[str]] = {m.key: [] for m in METRICS}
    bounds = _PROFILE_BOUNDS[profile]
    if profile == "lean":
        states = [lean(st) for st in states]
    for st in states:
        pool = _pair("pool", st.pool)
        for (key, values), value in st.scalars.items():
            labels = _label_text(key, values) if values else ""
            lines[key].append(f"{_SAMPLE[key]}{{{pool}{labels}}} {format_value(value)}")
        for (key, values), hist in st.histograms.items():
            base = BY_KEY[key].prom
            labels = pool + (_label_text(key, values) if values else "")
            prefix = f'{base}_bucket{{{labels},le="'
            cumulative = list(accumulate(hist.counts))
            family = lines[key]
            family.extend([f'{prefix}{le}"}} {n}' for le, n in zip(bounds[key], cumulative)])
            family.append(f"{base}_count{{{labels}}} {cumulative[-1]}")
            family.append(f"{base}_sum{{{labels}}} {format_value(hist.sum)}")
        if st.live:
            info = _INFO
            values = tuple(st.info.get(n, "") for n in _NAMES[info.key])
            sample = info_sample_name(info)
            lines[info.key].append(f"{sample}{{{pool}{_label_text(info.key, values)}}} 1")

    out: list[str] = []
    for metric in METRICS:
        family = lines[metric.key]
        if not family:
            continue
        kind = "gauge" if metric.type == "info" and not openmetrics else metric.type
        name = metric.prom if openmetrics else _text_family_name(metric)
        out.append(f"# HELP {name} {escape_help(metric.help)}")
        out.append(f"# TYPE {name} {kind}")
        if openmetrics and metric.unit:
            out.append(f"# UNIT {name} {metric.unit}")
        out.extend(family)
    return "\n".join(out) + "\n" if out else ""


def render_exporter(values: dict[str, float], *, openmetrics: bool = False) -> str:
    """The exporter's own families (`EXPORTER_METRICS`), from their current values by key."""
    out: list[str] = []
    for metric in EXPORTER_METRICS:
        name = metric.prom if openmetrics else _text_family_name(metric)
        out.append(f"# HELP {name} {escape_help(metric.help)}")
        out.append(f"# TYPE {name} {metric.type}")
        out.append(f"{metric.sample_name} {format_value(values.get(metric.key, 0))}")
    return "\n".join(out) + "\n"


def finish(text: str, *, openmetrics: bool) -> str:
    return text + "# EOF\n" if openmetrics else text


def _text_family_name(metric: Metric) -> str:
    # The 0.0.4 text format names a counter family after its samples, and has no info type.
    if metric.type == "counter":
        return metric.sample_name
    if metric.type == "info":
        return info_sample_name(metric)
    return metric.prom


_NAMES = {m.key: tuple(m.labels) for m in METRICS}
_SAMPLE = {m.key: m.sample_name for m in METRICS}
_INFO = BY_KEY["pool_info"]
