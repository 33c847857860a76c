"""Render pool states as Prometheus text (0.0.4) or OpenMetrics 1.0, directly.

prometheus_client builds a Sample object per line and formats it generically,
which costs 50-77 ms for 100 pools. Here label prefixes and bucket bounds are
formatted once, and each line is one f-string: the same bytes, several times faster.
Tests parse both outputs with prometheus_client's own parsers to prove them valid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .names import METRICS, Metric, info_sample_name
from .state import PoolState

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """Go-style float formatting, as Prometheus itself writes values."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _bucket_bounds(metric: Metric) -> list[str]:
    # OpenMetrics wants canonical floats for "le" ("1.0", not "1"); for bounds between
    # 1e-4 and 1e15 Python's repr writes them as Go does.
    return [repr(float(b)) for b in metric.buckets] + ["+Inf"]


_BOUNDS = {m.key: _bucket_bounds(m) for m in METRICS if m.type == "histogram"}


def _labels(pool: str, names: Iterable[str], values: Iterable[str]) -> str:
    parts = [f'pool="{escape_label(pool)}"']
    parts += [f'{n}="{escape_label(v)}"' for n, v in zip(names, values)]
    return ",".join(parts)


def render(states: list[PoolState], *, openmetrics: bool = False) -> str:
    """Every family of the contract for *states*, in the chosen format.

    OpenMetrics output ends without the ``# EOF`` line, so that a caller can
    append other families first; `finish` adds it.
    """
    out: list[str] = []
    add = out.append
    for metric in METRICS:
        lines = _family_lines(metric, states, openmetrics)
        if not lines:
            continue
        kind = "gauge" if metric.type == "info" and not openmetrics else metric.type
        name = metric.prom if openmetrics else _text_family_name(metric)
        add(f"# HELP {name} {escape_help(metric.help)}")
        add(f"# TYPE {name} {kind}")
        if openmetrics and metric.unit:
            add(f"# UNIT {name} {metric.unit}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def finish(text: str, *, openmetrics: bool) -> str:
    return text + "# EOF\n" if openmetrics else text


def _text_family_name(metric: Metric) -> str:
    # The 0.0.4 text format names a counter family after its samples, and has no info type.
    if metric.type == "counter":
        return metric.sample_name
    if metric.type == "info":
        return info_sample_name(metric)
    return metric.prom


def _family_lines(metric: Metric, states: list[PoolState], openmetrics: bool) -> list[str]:
    lines: list[str] = []
    add = lines.append
    names = tuple(metric.labels)
    if metric.type == "info":
        sample = info_sample_name(metric)
        for st in states:
            if st.live:
                add(f"{sample}{{{_labels(st.pool, names, (st.info.get(n, '') for n in names))}}} 1")
        return lines
    if metric.type == "histogram":
        bounds = _BOUNDS[metric.key]
        base = metric.prom
        for st in states:
            for (key, values), hist in st.histograms.items():
                if key != metric.key:
                    continue
                labels = _labels(st.pool, names, values)
                cumulative = hist.cumulative()
                for le, n in zip(bounds, cumulative):
                    add(f'{base}_bucket{{{labels},le="{le}"}} {n}')
                add(f"{base}_count{{{labels}}} {cumulative[-1]}")
                add(f"{base}_sum{{{labels}}} {format_value(hist.sum)}")
        return lines
    sample = metric.sample_name
    for st in states:
        for (key, values), value in st.scalars.items():
            if key == metric.key:
                add(f"{sample}{{{_labels(st.pool, names, values)}}} {format_value(value)}")
    return lines
