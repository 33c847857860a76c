"""Two ways to time the same workers, side by side: fixed duration and fixed work.

- **Fixed duration** ("how many queries per second"): every worker repeats its
  operation until a common deadline; throughput = all completions / elapsed. The
  slowest worker's share is its completions over the mean (1.0: an even split).
- **Fixed work** ("how long until the slowest worker finishes its share"): every
  worker does the same number of operations; the completion time is when the last
  one ends, and throughput = all operations / completion time. The slowest
  worker's share here is the mean finish time over the last one (1.0: all finished
  together; lower: a tail where fewer workers were running).

The two agree when workers progress evenly and start together; they part when one
worker lags (fixed work waits for it, fixed duration does not) or when the start
or the end of a run weighs on a short run. Every operation returns one sample
(a query's latency, or the wait for a connection) so that percentiles come from
the same runs.
"""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import pinning

#: an operation: does one unit of work and returns the sample to record (seconds)
SyncOp = Callable[[], float]
AsyncOp = Callable[[], Awaitable[float]]

DURATION = "fixed duration"
WORK = "fixed work"
MEASURES = (DURATION, WORK)


@dataclass
class Measure:
    """One timed run of n workers."""

    qps: float
    slowest_share: float  # see the module docstring: per measure, 1.0 is even
    seconds: float  # elapsed until the last worker ended
    per_worker: list[int]
    samples: list[float] = field(repr=False)
    cpu_us_per_op: float = 0.0  # this process's CPU (all threads) per operation
    switches_per_op: float = 0.0  # this process's context switches per operation

    def account(self, usage: Usage) -> Measure:
        ops = sum(self.per_worker)
        self.cpu_us_per_op = usage.cpu / ops * 1e6
        self.switches_per_op = usage.switches / ops
        return self

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    @property
    def max_sample(self) -> float:
        return max(self.samples)


class Usage:
    """This process's CPU time and context switches (voluntary or not) since creation.

    A pool that convoys (threads queuing on its lock, sleeping and being woken one by
    one) shows as more context switches per query than raw connections; a pool that
    costs CPU shows as more CPU per query. Neither counts PostgreSQL's processes.
    """

    def __init__(self) -> None:
        self._cpu, self._switches = self._now()

    @staticmethod
    def _now() -> tuple[float, int]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime, ru.ru_nvcsw + ru.ru_nivcsw

    @property
    def cpu(self) -> float:
        return self._now()[0] - self._cpu

    @property
    def switches(self) -> int:
        return self._now()[1] - self._switches


@contextmanager
def server(
    dsn: str | None, max_connections: int = 40, announce: str | None = None
) -> Iterator[str]:
    """*dsn* if one was given, else a throwaway cluster's, destroyed on the way out.

    What the benchmarks that also run alone (`--dsn` optional) share; *announce*, if
    given, names the benchmark in a progress line when a cluster is started. Only a
    cluster started here is one whose processes `pinned` may move between CPUs.
    """
    if dsn is not None:
        yield dsn
        return
    from poolwatch.embedded import create_cluster

    if announce:
        print(f"{announce}: starting a throwaway PostgreSQL cluster", file=sys.stderr)
    cluster = create_cluster(max_connections=max_connections)
    datadir = pinning.adopt(cluster.datadir)
    try:
        yield cluster.dsn()
    finally:
        pinning.disown(datadir)
        cluster.destroy()


def median_interval(
    values: list[float], level: float = 0.95, resamples: int = 2000, seed: int = 17
) -> tuple[float, float]:
    """A bootstrap interval for the median of *values* (seeded: the same input, the same interval).

    On this shared VM one round's ratio moves by up to +-40% around its median. The
    median of many rounds is steadier, and this says how steady: resample the rounds
    with replacement, take each resample's median, keep the middle *level* of them.
    """
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    cut = int(resamples * (1.0 - level) / 2)
    return medians[cut], medians[-cut - 1]


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1.0 when all values are equal, 1/n when one has everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def _duration_measure(counts: list[int], elapsed: float, samples: list[float]) -> Measure:
    mean = sum(counts) / len(counts)
    return Measure(sum(counts) / elapsed, min(counts) / mean, elapsed, counts, samples)


def _work_measure(finishes: list[float], ops: int, samples: list[float]) -> Measure:
    last = max(finishes)
    n = len(finishes)
    return Measure(n * ops / last, statistics.fmean(finishes) / last, last, [ops] * n, samples)


def _run_threads(n: int, body: Callable[[int, float], None], seconds: float) -> float:
    """Start n threads together, give each (index, start time); seconds until all end."""
    barrier = threading.Barrier(n + 1)
    start = [0.0]

    def run(i: int) -> None:
        barrier.wait()
        body(i, start[0])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start[0] = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(timeout=seconds + 120)  # bounded: a stuck worker fails the run loudly
        if t.is_alive():
            raise RuntimeError("a benchmark worker did not finish within two minutes")
    return time.perf_counter() - start[0]


def threads_for(n: int, make_op: Callable[[int], SyncOp], seconds: float) -> Measure:
    """Fixed duration: n threads run their op until *seconds* have passed."""
    samples: list[list[float]] = [[] for _ in range(n)]

    def body(i: int, start: float) -> None:
        op, out = make_op(i), samples[i]
        append, clock, stop = out.append, time.perf_counter, start + seconds
        while clock() < stop:
            append(op())

    usage = Usage()
    elapsed = _run_threads(n, body, seconds)
    counts = [len(s) for s in samples]
    return _duration_measure(counts, elapsed, [x for s in samples for x in s]).account(usage)


def threads_work(n: int, make_op: Callable[[int], SyncOp], ops: int) -> Measure:
    """Fixed work: n threads run their op *ops* times each."""
    samples: list[list[float]] = [[] for _ in range(n)]
    finishes = [0.0] * n

    def body(i: int, start: float) -> None:
        op, out = make_op(i), samples[i]
        append = out.append
        for _ in range(ops):
            append(op())
        finishes[i] = time.perf_counter() - start

    usage = Usage()
    _run_threads(n, body, 600.0)
    return _work_measure(finishes, ops, [x for s in samples for x in s]).account(usage)


async def tasks_for(n: int, op: AsyncOp, seconds: float) -> Measure:
    """Fixed duration: n asyncio tasks run *op* until *seconds* have passed."""
    samples: list[list[float]] = [[] for _ in range(n)]
    clock = time.perf_counter
    stop = clock() + seconds
    start = clock()
    usage = Usage()

    async def body(i: int) -> None:
        append = samples[i].append
        while clock() < stop:
            append(await op())

    await asyncio.wait_for(asyncio.gather(*(body(i) for i in range(n))), seconds + 120)
    elapsed = clock() - start
    counts = [len(s) for s in samples]
    return _duration_measure(counts, elapsed, [x for s in samples for x in s]).account(usage)


async def tasks_work(n: int, op: AsyncOp, ops: int) -> Measure:
    """Fixed work: n asyncio tasks run *op* *ops* times each."""
    samples: list[list[float]] = [[] for _ in range(n)]
    finishes = [0.0] * n
    clock = time.perf_counter
    start = clock()
    usage = Usage()

    async def body(i: int) -> None:
        append = samples[i].append
        for _ in range(ops):
            append(await op())
        finishes[i] = clock() - start

    await asyncio.wait_for(asyncio.gather(*(body(i) for i in range(n))), 600)
    return _work_measure(finishes, ops, [x for s in samples for x in s]).account(usage)


def disagreement_note(
    label: str,
    by_measure: dict[str, list[Measure]],
    base: dict[str, list[Measure]] | None,
    limit: float,
) -> str | None:
    """Why the two measures of one library differ by more than *limit*, or None if they don't.

    Compares the median throughputs; the explanation rests on what the runs
    themselves recorded: the in-round ratios to the *base* library (which cancel the
    machine's load moving between runs), the tail of the fixed-work runs (workers
    finishing apart) and how even the fixed-duration split was.
    """
    dur = statistics.median(m.qps for m in by_measure[DURATION])
    work = statistics.median(m.qps for m in by_measure[WORK])
    ratio = work / dur
    if abs(ratio - 1.0) <= limit:
        return None
    tail = 1.0 - statistics.median(m.slowest_share for m in by_measure[WORK])
    even = statistics.median(m.slowest_share for m in by_measure[DURATION])
    relative = ""
    if base is not None and base is not by_measure:
        rel = {
            k: statistics.median(m.qps / b.qps for m, b in zip(by_measure[k], base[k]))
            for k in MEASURES
        }
        relative = f" (against the reference in the same rounds: {rel[DURATION]:.2f} by fixed"
        relative += f" duration, {rel[WORK]:.2f} by fixed work)"
        if abs(rel[WORK] / rel[DURATION] - 1.0) <= limit:
            return (
                f"{label}: fixed work {work:,.0f} qps vs fixed duration {dur:,.0f}"
                f" ({ratio:.2f}x), but{relative} the two agree: the reference moved the same"
                " way, so the gap is the shared machine's load changing between the runs,"
                " not the pool."
            )
    if ratio < 1.0 and tail >= (1.0 - ratio) / 2:
        why = (
            f"the fixed-work runs end in a tail: workers finished on average {tail:.0%} before"
            " the last one, so fewer workers ran at the end and the completion time is set by"
            f" the slowest (in fixed-duration runs the slowest worker's share was {even:.2f})"
        )
    elif ratio < 1.0:
        why = (
            f"workers finished close together (tail {tail:.0%}), so the gap is not a tail: the"
            " fixed-work runs pay their start (threads waking on the barrier, cold caches)"
            " over their operations, or the machine was busier during them"
        )
    else:
        why = (
            "the fixed-duration runs were the slower ones; a fixed-duration throughput does"
            " not suffer from an uneven split (there the slowest worker's share was"
            f" {even:.2f}), so the machine was busier during them"
        )
    head = f"{label}: fixed work {work:,.0f} qps vs fixed duration {dur:,.0f} ({ratio:.2f}x)"
    return f"{head}{relative}: {why}."
