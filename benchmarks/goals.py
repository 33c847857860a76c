"""Issue 17's goals, judged from the results of the same run.

"No worse than before" is judged against poolwatch as it was when the issue was filed
(benchmarks/before.py), measured in the same rounds: the median of in-round ratios, with
a bootstrap interval; a miss whose interval still reaches the goal says so. The checkout
goals are judged by instructions per operation (benchmarks/instructions.py), which repeat
to a few per operation, where the wall clock of this VM moves by more than the 1-5%
being judged; the wall-clock ratios stand beside them. Without git history the
comparison falls back to the previous published run (the figures below), judged by the
ratio to psycopg_pool measured in the same rounds.
"""

from __future__ import annotations

import statistics

from . import instructions
from .before import NAME as BEFORE
from .floor import NAME as FLOOR
from .harness import DURATION, MEASURES, Measure, jain
from .throughput import BASELINE, RAW, Results, ratio_stats

#: a median of in-round ratios with its 95% interval (see harness.median_interval)
Stats = tuple[float, float, float]

#: the previous run (benchmarks/RESULTS.md before issue 17): µs, and ratio to psycopg_pool
CHECKOUT_BEFORE = {
    "sync getconn+putconn": ("poolwatch + Prometheus + OTel", 1.22, 0.40),
    "sync connection()": ("poolwatch + Prometheus + OTel", 1.88, 0.28),
    "async getconn+putconn": ("poolwatch", 1.47, 0.26),
    "async connection()": ("poolwatch", 2.65, 0.25),
}
#: 16 and 64 threads on a pool of 4, fixed duration: qps, p99 wait ms, qps and p99 vs psycopg_pool
CONTENTION_BEFORE = {
    "16 threads, pool of 4": (8278, 2.81, 8278 / 6520, 2.81 / 3.78),
    "64 threads, pool of 4": (7037, 13.77, 7037 / 5943, 13.77 / 15.25),
}


def _ratio(runs: list[Measure], base: list[Measure], key: str = "qps") -> float:
    def value(m: Measure) -> float:
        return m.qps if key == "qps" else m.percentile(0.99) if key == "p99" else m.max_sample

    return statistics.median(value(m) / value(b) for m, b in zip(runs, base))


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _stats(runs: list[Measure], base: list[Measure], key: str = "qps") -> Stats:
    def value(m: Measure) -> float:
        return m.qps if key == "qps" else m.percentile(0.99) if key == "p99" else m.max_sample

    return ratio_stats(runs, base, value)


def _show(stats: Stats) -> str:
    mid, low, high = stats
    return f"{mid:.3f} (95% interval {low:.2f} to {high:.2f})"


def _judge(at_least: list[tuple[Stats, float]], at_most: list[tuple[Stats, float]]) -> str:
    """Met if every median is on the right side of its goal; a miss says whether the
    rounds' spread still reaches the goal (then this machine cannot tell them apart)."""
    if all(s[0] >= g for s, g in at_least) and all(s[0] <= g for s, g in at_most):
        return "met"
    reachable = all(s[2] >= g for s, g in at_least) and all(s[1] <= g for s, g in at_most)
    if reachable:
        return "**missed** (the 95% interval reaches the goal: within this machine's noise)"
    return "**missed**"


def table(
    checkout: dict[str, dict[str, list[float]]],
    raw: Results,
    contention: Results,
    counted: instructions.Results | None = None,
) -> str:
    rows: list[tuple[str, str, str]] = []
    for threads, by_lib in raw.items():
        goal = 0.90 if int(threads) >= 64 else 0.95
        pw, base = by_lib["poolwatch"], by_lib[RAW]
        stats = {m: _stats(pw[m], base[m]) for m in MEASURES}
        tails = {k: [_stats(pw[m], base[m], k) for m in MEASURES] for k in ("p99", "max")}
        p99, mx = (max(t[0] for t in tails[k]) for k in ("p99", "max"))
        least = by_lib.get(FLOOR)
        floor_note = (
            f"; a minimal pool in the same rounds ({FLOOR}):"
            f" {_ratio(least[DURATION], base[DURATION]):.3f} and"
            f" {_ratio(least[MEASURES[1]], base[MEASURES[1]]):.3f}"
            if least
            else ""
        )
        rows.append((
            f"T = {threads} threads on a pool of T: ≥ {goal:.2f} of raw, both measures",
            f"{_show(stats[DURATION])} (fixed duration), {_show(stats[MEASURES[1]])}"
            f" (fixed work){floor_note}",
            _judge([(st, goal) for st in stats.values()], []),
        ))  # fmt: skip
        rows.append((
            f"T = {threads}: query p99 and max latency ≤ 1.2 x raw's",
            f"p99 {p99:.2f} x, max {mx:.2f} x (the worse of the two measures)",
            _judge([], [(t, 1.2) for k in tails for t in tails[k]]),
        ))  # fmt: skip
    row = "64 asyncio tasks, pool of 4"
    pw, base = contention[row]["poolwatch"], contention[row][BASELINE]
    stats = {m: _stats(pw[m], base[m]) for m in MEASURES}
    p99s = {m: _stats(pw[m], base[m], "p99") for m in MEASURES}
    rows.append((
        "64 asyncio tasks on a pool of 4: ≥ 1.25 x psycopg_pool, both measures; p99 wait no worse",
        f"{_show(stats[DURATION])} x (fixed duration) and {_show(stats[MEASURES[1]])} x (fixed"
        f" work); p99 wait {max(p[0] for p in p99s.values()):.2f} x (the worse measure)",
        _judge([(st, 1.25) for st in stats.values()], [(p, 1.0) for p in p99s.values()]),
    ))  # fmt: skip
    for row, (qps_before, p99_before, ratio_before, p99_ratio_before) in CONTENTION_BEFORE.items():
        pw, base = contention[row]["poolwatch"][DURATION], contention[row][BASELINE][DURATION]
        qps = statistics.median(m.qps for m in pw)
        p99 = statistics.median(m.percentile(0.99) for m in pw) * 1e3
        fair = statistics.median(jain([float(c) for c in m.per_worker]) for m in pw)
        goal = f"{row}: throughput and p99 wait no worse than before, Jain ≥ 0.99"
        old = contention[row].get(BEFORE)
        if old is not None:
            now = contention[row]["poolwatch"]
            stats = {m: _stats(now[m], old[m]) for m in MEASURES}
            p99s = {m: _stats(now[m], old[m], "p99") for m in MEASURES}
            verdict = _judge(
                [(st, 1.0) for st in stats.values()], [(p, 1.0) for p in p99s.values()]
            )
            rows.append((
                goal,
                f"{qps:,.0f} qps; vs before, side by side: {_show(stats[DURATION])} x"
                f" (fixed duration), {_show(stats[MEASURES[1]])} x (fixed work); p99 wait"
                f" {p99:.2f} ms, {max(p[0] for p in p99s.values()):.2f} x before's (the worse"
                f" measure); Jain {fair:.3f}",
                verdict if fair >= 0.99 else "**missed** (fairness)",
            ))  # fmt: skip
            continue
        ratio, p99_ratio = _ratio(pw, base), _ratio(pw, base, "p99")
        rows.append((
            goal,
            f"{qps:,.0f} qps ({ratio:.2f} x psycopg_pool; before {qps_before:,} qps,"
            f" {ratio_before:.2f} x), p99 wait {p99:.2f} ms ({p99_ratio:.2f} x; before"
            f" {p99_before} ms, {p99_ratio_before:.2f} x), Jain {fair:.3f}",
            _verdict(ratio >= ratio_before and p99_ratio <= p99_ratio_before and fair >= 0.99),
        ))  # fmt: skip
    for case, (lib, us_before, ratio_before) in CHECKOUT_BEFORE.items():
        values, base_values = checkout[case][lib], checkout[case][BASELINE]
        us = statistics.median(values)
        goal = f"checkout, {case}: no worse than before"
        old_values = checkout[case].get(BEFORE)
        now_ir = counted.per_op(case, instructions.POOLWATCH) if counted else None
        old_ir = counted.per_op(case, BEFORE) if counted else None
        if old_values is not None and now_ir is not None and old_ir is not None:
            # Judged by instructions, which repeat to a few per operation; the wall clock
            # on this VM moves by more than the difference being judged.
            vs_old = statistics.median(v / o for v, o in zip(values, old_values))
            rows.append((
                goal,
                f"{now_ir:,.0f} instructions against {old_ir:,.0f} before"
                f" ({now_ir / old_ir:.3f} x, counted by valgrind); wall clock, side by side:"
                f" {us:.2f} µs against {statistics.median(old_values):.2f} µs, {vs_old:.3f} x"
                " (median of in-round ratios)",
                _verdict(now_ir <= old_ir),
            ))  # fmt: skip
            continue
        if old_values is not None:
            vs_old = statistics.median(v / o for v, o in zip(values, old_values))
            rows.append((
                goal,
                f"{us:.2f} µs against {statistics.median(old_values):.2f} µs before, side by"
                f" side: {vs_old:.3f} x (median of in-round ratios)",
                _verdict(vs_old <= 1.0),
            ))  # fmt: skip
            continue
        ratio = us / statistics.median(base_values)
        rows.append((
            goal,
            f"{us:.2f} µs, {ratio:.2f} x psycopg_pool"
            f" (before {us_before} µs, {ratio_before:.2f} x)",
            _verdict(ratio <= ratio_before),
        ))  # fmt: skip
    lines = ["| goal | this run | verdict |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in rows]
    return "\n".join(lines)
