"""Generate docs/metrics.md from the name table (a test fails when the file drifts)."""

from __future__ import annotations

from .exposition import format_value
from .names import METRICS, OTEL_ATTRIBUTES, OTEL_DERIVED, Metric


def _labels(metric: Metric) -> str:
    parts = []
    for name, values in metric.labels.items():
        shown = "\\|".join(v if v else '""' for v in values)
        parts.append(f"`{name}`" + (f" = {shown}" if values else ""))
    return "<br>".join(parts)


def _prom_samples(metric: Metric) -> str:
    if metric.type == "histogram":
        return f"`{metric.prom}_bucket`, `_count`, `_sum`"
    if metric.type == "info":
        return f"`{metric.prom}_info`"
    return f"`{metric.sample_name}`"


def metrics_markdown() -> str:
    lines = [
        "# Metric reference",
        "",
        "Generated from `poolwatch.metrics.names` by `python -m poolwatch.metrics.docs`;"
        " do not edit by hand. Every series has the label `pool`.",
        "",
        "| Prometheus series | type | labels | OpenTelemetry | unit | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        otel = f"`{m.otel}`" if m.otel else "—"
        lines.append(
            f"| {_prom_samples(m)} | {m.type} | {_labels(m)} | {otel} | {m.otel_unit} | {m.help} |"
        )
    lines += ["", "## Histogram buckets (seconds, upper bounds)", ""]
    for m in METRICS:
        if m.buckets:
            bounds = ", ".join(format_value(b) for b in m.buckets)
            lines.append(f"- `{m.prom}`: {bounds}, +Inf")
    lines += ["", "## OpenTelemetry", "", "Attributes:", ""]
    lines += [f"- label `{k}` → attribute `{v}`" for k, v in OTEL_ATTRIBUTES.items()]
    lines += ["", "Instruments derived from another row:", ""]
    lines += [f"- `{name}` from `{key}`" for name, key in OTEL_DERIVED.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(metrics_markdown(), end="")
