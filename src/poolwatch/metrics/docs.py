"""Generate docs/metrics.md from the name table (a test fails when the file drifts)."""

from __future__ import annotations

from .exposition import format_value
from .multiprocess import COMPACT_AFTER, MAX_RETIRED_NAMES, STALE_AFTER, WRITE_INTERVAL
from .multiprocess_files import MAX_FILE_BYTES, MAX_POOLS_PER_FILE
from .names import EXPORTER_METRICS, METRICS, OTEL_ATTRIBUTES, OTEL_DERIVED, Metric
from .state import MAX_LABEL_LENGTH


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


MULTIPROCESS_GUARANTEES = f"""\
## Multiprocess mode: what the numbers guarantee

With `PROMETHEUS_MULTIPROC_DIR` set, every process writes its pools' state to one
file of that directory (every {WRITE_INTERVAL:g} s, at each scrape and at exit), and every
scrape merges all files per pool name. "At exit" includes `multiprocessing` children
(fork or forkserver start method), which end with `os._exit` and run no `atexit`
handler: their final write is registered as a multiprocessing finalizer.

- **Counters and histograms never decrease**, across pools closed and re-created under
  one name, forked children, workers that exit or are killed, and new processes that get
  a dead one's pid. Files are named after a random id per process incarnation (drawn
  again after `fork()`), pools told apart by a random token, never by pid or `id()`.
  A forked child never writes the pools its parent had opened; one made but not opened
  before `fork()` (gunicorn `--preload`) counts in the child that opens it. A pool given to
  `register()` is held until it has been written closed, so its last counts are kept.
- **Gauges** (connections, pending requests, saturation, oldest wait...) and the
  `poolwatch_pool_info` series come only from live processes: a process is live while its
  file is at most {STALE_AFTER:g} s old and it has not exited. This needs no pid, so it
  works from another PID namespace (a sidecar container running `poolwatch serve`). A
  process that exits normally leaves at once; one that is killed keeps its gauges for up to
  {STALE_AFTER:g} s (less in the same PID namespace, where a missing pid is noticed).
- **Bounded scrapes**: the counts of processes that exited, or whose file has not changed
  for {COMPACT_AFTER:g} s, are folded into one file (`poolwatch-retired.json`) under a lock,
  and their files removed. A process that was only paused that long notices that its file
  is gone when it resumes, and from then on publishes only what it counted since.
  The retired file holds at most {MAX_POOLS_PER_FILE:,} pool names (the limit every file is
  read with): past that, dead processes' files are left as they are, with one warning, so
  that their counts stay; scrapes then read one file more per dead process.
  One process keeps counting at most {MAX_RETIRED_NAMES:,} names of pools it closed:
  past that (a process that keeps making new names, such as unnamed pools "pool-1",
  "pool-2"...), the oldest closed names are forgotten with one warning and their series
  end (a single process forgets garbage-collected pools' names past the same bound).
  Give pools a fixed set of names.
- **Validated files**: a file that is not a regular file, is larger than
  {MAX_FILE_BYTES // 2**20} MiB, is not JSON, holds `NaN`/`Infinity`, negative or huge numbers,
  unknown families, label values outside this table, duplicate series or names longer
  than {MAX_LABEL_LENGTH} characters, or is not named after the incarnation it holds (a
  copy, which would count twice) is skipped whole, logged once and counted in
  `poolwatch_exporter_state_files_rejected_total`; /metrics, /pools and /api/live keep
  answering. Writes go through a temporary file made by `mkstemp` and a rename, so a
  planted symlink is never written through; a world-writable directory is warned about.
- **`poolwatch serve` readiness** (`/readyz`) comes from the merged live states: not ready
  when no process has written a live state for {STALE_AFTER:g} s, when a pool has no
  connection and its last connect failed, or when a request has waited 1 s or more.
"""


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
    lines += [
        "",
        "## The exporter's own series (multiprocess mode)",
        "",
        "Served with the pools' series when the exporter reads a state directory"
        " (`poolwatch serve`, or `PROMETHEUS_MULTIPROC_DIR` set); no `pool` label.",
        "",
        "| Prometheus series | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| {_prom_samples(m)} | {m.type} | {m.help} |" for m in EXPORTER_METRICS]
    lines += ["", MULTIPROCESS_GUARANTEES]
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
