"""SELECT 1 throughput against raw connections, and behaviour under contention.

Every row is measured twice in each round, by fixed duration and by fixed work (see
`harness`), with the libraries interleaved and their order rotated from round to
round; ratios are taken within a round, then the median over rounds is reported.
In the rows against raw connections the libraries take turns every 20 ms on the
same threads (`slices`) and the client and the server are pinned to separate CPUs
(`pinning`): one round's ratio then moves by a standard deviation of about 0.07-0.09
instead of 0.28-0.73 with one 0.3 s run per library (measured on the shared 2-core
VM, T = 1 to 16; the README's Benchmarks section has the table).

- T threads each running SELECT 1 on a pool of T, against T threads each holding a
  raw psycopg connection (the limit a pool can only approach). Every connection is
  in autocommit mode, raw or pooled, so that each SELECT 1 is one round trip. The
  sample is each query's latency, pool checkout included.
- 16 and 64 threads (and 64 asyncio tasks) on a pool of 4: throughput, the wait for
  a connection (p50, p99, max) and fairness, the Jain index of per-worker completions
  in the fixed-duration runs (1.0: every worker got the same share).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import psycopg
import psycopg_pool

import poolwatch

from . import before, floor, harness, pinning
from .harness import DURATION, MEASURES, Measure, SyncOp
from .peers import AsyncPeer, PsycopgStyle, SQLAlchemyPeer, SyncPeer, async_peers, new_loop
from .slices import SlicedWorkers

SQL = "SELECT 1"
AUTOCOMMIT = {"autocommit": True}
RAW = "raw connections"
BASELINE = "psycopg_pool 3.3"
DISAGREE = 0.20  # two measures further apart than this get an explanation
#: seconds per slice in the vs-raw rows: libraries take turns this often (see `slices`)
SLICE = 0.02

#: row -> library -> measure -> one Measure per round
Results = dict[str, dict[str, dict[str, list[Measure]]]]


def _threads(n: int, work: Callable[[int], None]) -> float:
    """Run work(i) once on each of n threads started together; seconds until all end."""

    def make(i: int) -> SyncOp:
        def once() -> float:
            work(i)
            return 0.0

        return once

    return harness.threads_work(n, make, 1).seconds


def _query_op(peer: Any, conns: list[Any]) -> Callable[[int], SyncOp]:
    clock = time.perf_counter
    if peer is None:

        def make_raw(i: int) -> SyncOp:
            execute = conns[i].execute

            def op() -> float:
                t0 = clock()
                execute(SQL)
                return clock() - t0

            return op

        return make_raw
    connection = peer.pool.connection

    def make_pooled(i: int) -> SyncOp:
        def op() -> float:
            t0 = clock()
            with connection() as conn:
                conn.execute(SQL)
            return clock() - t0

        return op

    return make_pooled


def _interleave(
    names: list[str],
    rounds: int,
    run: Callable[[str, str], Measure],
    out: dict[str, dict[str, list[Measure]]],
) -> None:
    """Each round: every library by both measures, the order rotated each round."""
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for measure in MEASURES:
            for name in order:
                m = run(name, measure)
                out.setdefault(name, {}).setdefault(measure, []).append(m)


def vs_raw(
    dsn: str,
    rounds: int,
    seconds: float,
    sizes: tuple[int, ...],
    pin: bool = True,
    notes: list[str] | None = None,
    slice_seconds: float = SLICE,
) -> Results:
    """Each row in *rounds* rounds of *seconds* per library and measure, cut in slices.

    The libraries take turns every *slice_seconds* on the same threads (see `slices`),
    with the client and the server pinned to separate CPUs (see `pinning`). *notes*,
    if given, collects what the pinning did (each distinct outcome once).
    """
    out: Results = {}
    slices_per_round = max(1, round(seconds / slice_seconds))
    for threads in sizes:
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]
        peers: dict[str, Any] = {RAW: None}
        workers = None
        try:
            for name, module in (("poolwatch", poolwatch), (BASELINE, psycopg_pool)):
                peers[name] = PsycopgStyle(name, module, dsn, threads, kwargs=AUTOCOMMIT)
            peers[floor.NAME] = floor.FloorPeer(dsn, threads, AUTOCOMMIT)
            workers = SlicedWorkers(
                threads, {name: _query_op(peer, conns) for name, peer in peers.items()}
            )
            # Pinned only now: every backend of the row has been forked.
            with pinning.pinned(dsn) if pin else nullcontext("not pinned") as note:
                if notes is not None and note not in notes:
                    notes.append(note)
                # The fixed work per slice: what raw connections do in one, split evenly.
                warm = workers.round(0, slice_seconds, slices_per_round, 1)[RAW][DURATION]
                quota = max(5, int(warm.qps * slice_seconds) // threads)
                row = out.setdefault(f"{threads}", {})
                for r in range(rounds):
                    by_lib = workers.round(r, slice_seconds, slices_per_round, quota)
                    for name, by_measure in by_lib.items():
                        for measure, m in by_measure.items():
                            row.setdefault(name, {}).setdefault(measure, []).append(m)
            print(f"  vs raw: {threads} threads done", file=sys.stderr, flush=True)
        finally:
            if workers is not None:
                workers.close()
            for peer in peers.values():
                if peer is not None:
                    peer.close()
            for c in conns:
                c.close()
    return out


def _wait_op(peer: SyncPeer) -> Callable[[int], SyncOp]:
    clock = time.perf_counter
    if isinstance(peer, SQLAlchemyPeer):
        connect = peer.pool.connect

        def make_sqla(i: int) -> SyncOp:
            def op() -> float:
                t0 = clock()
                conn = connect()
                wait = clock() - t0
                try:
                    conn.cursor().execute(SQL)
                finally:
                    conn.close()
                return wait

            return op

        return make_sqla
    getconn, putconn = peer.pool.getconn, peer.pool.putconn

    def make(i: int) -> SyncOp:
        def op() -> float:
            t0 = clock()
            conn = getconn()
            wait = clock() - t0
            try:
                conn.execute(SQL)
            finally:
                putconn(conn)
            return wait

        return op

    return make


def _async_wait_op(peer: AsyncPeer) -> Callable[[], Any]:
    clock = time.perf_counter
    if peer.name.startswith("asyncpg"):
        acquire, release = peer.pool.acquire, peer.pool.release

        async def op_asyncpg() -> float:
            t0 = clock()
            conn = await acquire()
            wait = clock() - t0
            try:
                await conn.fetchval(SQL)
            finally:
                await release(conn)
            return wait

        return op_asyncpg
    getconn, putconn = peer.pool.getconn, peer.pool.putconn

    async def op() -> float:
        t0 = clock()
        conn = await getconn()
        wait = clock() - t0
        try:
            await conn.execute(SQL)
        finally:
            await putconn(conn)
        return wait

    return op


def contention(dsn: str, rounds: int, seconds: float) -> Results:
    out: Results = {}
    old = before.load()
    peers: list[SyncPeer] = [
        PsycopgStyle("poolwatch", poolwatch, dsn, 4, kwargs=AUTOCOMMIT),
        *([PsycopgStyle(before.NAME, old, dsn, 4, kwargs=AUTOCOMMIT)] if old else []),
        PsycopgStyle(BASELINE, psycopg_pool, dsn, 4, kwargs=AUTOCOMMIT),
        SQLAlchemyPeer(dsn, 4, autocommit=True),
    ]
    try:
        makers = {p.name: _wait_op(p) for p in peers}
        for workers in (16, 64):
            warm = harness.threads_for(workers, makers["poolwatch"], seconds)
            ops = max(20, int(warm.qps * seconds) // workers)

            def run(name: str, measure: str, workers: int = workers, ops: int = ops) -> Measure:
                if measure == DURATION:
                    return harness.threads_for(workers, makers[name], seconds)
                return harness.threads_work(workers, makers[name], ops)

            row = f"{workers} threads, pool of 4"
            _interleave(list(makers), rounds, run, out.setdefault(row, {}))
            print(f"  contention: {row} done", file=sys.stderr, flush=True)
    finally:
        for peer in peers:
            peer.close()
    loop = new_loop()
    apeers = loop.run_until_complete(async_peers(dsn, 4, kwargs=AUTOCOMMIT))
    try:
        aops = {ap.name: _async_wait_op(ap) for ap in apeers}
        warm = loop.run_until_complete(harness.tasks_for(64, aops["poolwatch"], seconds))
        ops = max(20, int(warm.qps * seconds) // 64)

        def arun(name: str, measure: str) -> Measure:
            if measure == DURATION:
                return loop.run_until_complete(harness.tasks_for(64, aops[name], seconds))
            return loop.run_until_complete(harness.tasks_work(64, aops[name], ops))

        row = "64 asyncio tasks, pool of 4"
        _interleave(list(aops), rounds, arun, out.setdefault(row, {}))
        print(f"  contention: {row} done", file=sys.stderr, flush=True)
    finally:
        for ap in apeers:
            loop.run_until_complete(ap.close())
        loop.close()
    return out


def _ratios(runs: list[Measure], base: list[Measure], key: Callable[[Measure], float]) -> float:
    return statistics.median(key(m) / key(b) for m, b in zip(runs, base))


def ratio_stats(
    runs: list[Measure], base: list[Measure], key: Callable[[Measure], float] | None = None
) -> tuple[float, float, float]:
    """The median of the in-round ratios runs/base (throughput by default) and its 95% interval."""
    value = key or _qps
    ratios = [value(m) / value(b) for m, b in zip(runs, base)]
    low, high = harness.median_interval(ratios)
    return statistics.median(ratios), low, high


def ratio_cell(runs: list[Measure], base: list[Measure]) -> str:
    mid, low, high = ratio_stats(runs, base)
    return f"{mid:.3f} ({low:.2f} to {high:.2f})"


def _qps(m: Measure) -> float:
    return m.qps


def vs_raw_table(results: Results) -> str:
    lines = [
        "| threads = pool size | library | measure | median qps | vs raw: median of in-round"
        " ratios (95% interval) | slowest worker's share | query p99 (ms) | p99 vs raw"
        " | query max (ms) | max vs raw | CPU µs / query | context switches / query |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, by_lib in results.items():
        raw = by_lib[RAW]
        for lib, by_measure in by_lib.items():
            for measure in MEASURES:
                runs = by_measure[measure]
                p99 = _ratios(runs, raw[measure], lambda m: m.percentile(0.99))
                mx = _ratios(runs, raw[measure], lambda m: m.max_sample)
                lines.append(
                    f"| {threads} | {lib} | {measure}"
                    f" | {statistics.median(m.qps for m in runs):,.0f}"
                    f" | {ratio_cell(runs, raw[measure])}"
                    f" | {statistics.median(m.slowest_share for m in runs):.2f}"
                    f" | {statistics.median(m.percentile(0.99) for m in runs) * 1e3:.3f}"
                    f" | {p99:.2f}"
                    f" | {statistics.median(m.max_sample for m in runs) * 1e3:.2f} | {mx:.2f}"
                    f" | {statistics.median(m.cpu_us_per_op for m in runs):.1f}"
                    f" | {statistics.median(m.switches_per_op for m in runs):.2f} |"
                )
    return "\n".join(lines) + _notes(results, "threads", RAW)


def contention_table(results: Results) -> str:
    lines = [
        "| workers | library | measure | median qps | vs psycopg_pool: median of in-round"
        " ratios (95% interval) | slowest worker's share | wait p50 (ms) | wait p99 (ms)"
        " | max wait (ms) | Jain fairness | CPU µs / query | context switches / query |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, by_lib in results.items():
        base = by_lib[BASELINE]
        for lib, by_measure in by_lib.items():
            for measure in MEASURES:
                runs = by_measure[measure]

                def med(key: Callable[[Measure], float], runs: list[Measure] = runs) -> float:
                    return statistics.median(key(m) for m in runs)

                fair = med(lambda m: harness.jain([float(c) for c in m.per_worker]))
                # In fixed-work runs every worker does the same count: Jain is 1 by design.
                fair_cell = f"{fair:.3f}" if measure == DURATION else "(equal by design)"
                lines.append(
                    f"| {row} | {lib} | {measure} | {med(_qps):,.0f}"
                    f" | {ratio_cell(runs, base[measure])}"
                    f" | {med(lambda m: m.slowest_share):.2f}"
                    f" | {med(lambda m: m.percentile(0.5)) * 1e3:.2f}"
                    f" | {med(lambda m: m.percentile(0.99)) * 1e3:.2f}"
                    f" | {med(lambda m: m.max_sample) * 1e3:.1f} | {fair_cell}"
                    f" | {med(lambda m: m.cpu_us_per_op):.1f}"
                    f" | {med(lambda m: m.switches_per_op):.2f} |"
                )
    return "\n".join(lines) + _notes(results, "", BASELINE)


def _notes(results: Results, unit: str, reference: str) -> str:
    notes = []
    for row, by_lib in results.items():
        for lib, by_measure in by_lib.items():
            label = f"T = {row}, {lib}" if unit else f"{row}, {lib}"
            base = by_lib[reference] if lib != reference else None
            note = harness.disagreement_note(label, by_measure, base, DISAGREE)
            if note:
                notes.append(f"- {note}")
    if not notes:
        return (
            f"\n\nThe two measures agree within {DISAGREE:.0%} in every row (median throughputs)."
        )
    head = (
        f"\n\nWhere the two measures disagree by more than {DISAGREE:.0%} (median throughputs):\n\n"
    )
    return head + "\n".join(notes)
