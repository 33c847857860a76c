"""Where a query's client CPU goes beyond its instructions: simulated cache misses.

The vs-raw rows (benchmarks/throughput.py) are CPU-bound on the pinned client core,
so a pool's cost per query is its share of that core. Instruction counts
(benchmarks/instructions.py) are one part of that share; the other is how long those
instructions take, and a large part of that is cache misses. This VM has no hardware
counters (`perf stat` reports cycles as not supported), so valgrind's cachegrind
simulates the caches instead: first-level instruction (I1) and data (D1) caches,
the last level (LL), and branch prediction.

Each child runs T threads, each with its own connection (raw) or a pool of T, and
makes N queries per thread (SELECT 1), after a warm-up; a child that makes none
gives the start-up to subtract. So every figure is per query, in the client process
only, never PostgreSQL's. With one thread the figures do not move between runs; with
several, valgrind's own thread switching moves them by a few percent.

It is not part of ./scripts/bench (a run takes minutes under valgrind): RESULTS.md's
profile section quotes its table and the command.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import floor, harness, instructions
from poolwatch.pool._compiled import PURE_PYTHON_VARIABLE

RAW = "raw connections"
FLOOR = floor.NAME
POOLWATCH = "poolwatch"
PURE = "poolwatch, Python blocks"
LIBRARIES = (RAW, FLOOR, POOLWATCH, PURE)
#: what cachegrind prints, in the order of the table's columns
EVENTS = {
    "instructions": r"I\s+refs:\s+([\d,]+)",
    "I1 misses": r"I1\s+misses:\s+([\d,]+)",
    "D1 misses": r"D1\s+misses:\s+([\d,]+)",
    "LL misses": r"LL\s+misses:\s+([\d,]+)",
    "branch mispredictions": r"Mispredicts:\s+([\d,]+)",
}
THREADS = (1, 4)
QUERIES = 20_000  # per child, split between its threads
WARM_UPS = 200  # per thread
JOBS = 2
DSN_VARIABLE = "POOLWATCH_CACHE_PROFILE_DSN"
ROOT = Path(__file__).resolve().parent.parent
VALGRIND = (
    "valgrind",
    "--tool=cachegrind",
    "--cache-sim=yes",
    "--branch-sim=yes",
    "--cachegrind-out-file=/dev/null",
)


def parse(stderr: str) -> dict[str, int]:
    """cachegrind's summary (the process's totals) as {event: count}."""
    found: dict[str, int] = {}
    for event, pattern in EVENTS.items():
        match = re.search(pattern, stderr)
        if match is None:
            raise ValueError(f"cachegrind printed no {event!r} line")
        found[event] = int(match.group(1).replace(",", ""))
    return found


def per_query(
    totals: Mapping[tuple[str, int, int], Mapping[str, int]],
) -> dict[tuple[str, int], dict[str, float]]:
    """(library, threads) -> {event: per query}, from the children's totals by
    (library, threads, queries made): the measured child less the start-up child."""
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for library, threads, made in totals:
        if made == 0:
            continue
        ran, idle = totals[library, threads, made], totals[library, threads, 0]
        made_in_all = (made // threads) * threads  # each thread makes an equal share
        rows[library, threads] = {e: (ran[e] - idle[e]) / made_in_all for e in EVENTS}
    return rows


def table(rows: Mapping[tuple[str, int], Mapping[str, float]]) -> str:
    header = "| threads | library | " + " | ".join(EVENTS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(EVENTS)]
    order = {library: i for i, library in enumerate(LIBRARIES)}
    for (library, threads), values in sorted(
        rows.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], len(order)))
    ):
        base = rows.get((FLOOR, threads))
        cells = []
        for event in EVENTS:
            cell = f"{round(values[event]):,}"  # an int: never "-0"
            if base is not None and library != FLOOR:
                cell += f" ({round(values[event] - base[event]):+,})"
            cells.append(cell)
        lines.append(f"| {threads} | {library} | " + " | ".join(cells) + " |")
    lines.append(
        "\nPer query, in the client process (all its threads). In brackets: against the"
        f" minimal pool ({FLOOR}) with as many threads."
    )
    return "\n".join(lines)


def run_child(dsn: str, library: str, threads: int, queries: int) -> dict[str, int]:
    cmd = [*VALGRIND, sys.executable, "-m", "benchmarks.cache_profile", "--child"]
    cmd += ["--library", library, "--threads", str(threads), "--queries", str(queries)]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env[DSN_VARIABLE] = dsn
    env.pop(PURE_PYTHON_VARIABLE, None)
    if library == PURE:
        env[PURE_PYTHON_VARIABLE] = "1"
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        tail = run.stderr.replace(dsn, "<dsn>")[-1500:]
        raise RuntimeError(f"{library}, {threads} threads failed (exit {run.returncode}):\n{tail}")
    return parse(run.stderr)


def measure(
    dsn: str,
    libraries: Iterable[str] = LIBRARIES,
    threads: Iterable[int] = THREADS,
    queries: int = QUERIES,
    jobs: int = JOBS,
) -> dict[tuple[str, int], dict[str, float]]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not on PATH: apt-get install valgrind")
    instructions.precompile()  # a child that compiled a module would count the compiler
    jobs_to_run = [(lib, t, n) for t in threads for lib in libraries for n in (0, queries)]
    done = iter(range(1, len(jobs_to_run) + 1))
    lock = threading.Lock()

    def one(job: tuple[str, int, int]) -> dict[str, int]:
        library, t, n = job
        found = run_child(dsn, library, t, n)
        with lock:
            print(
                f"  cache profile: {next(done)}/{len(jobs_to_run)} {library}, {t} threads,"
                f" {n} queries: {found['instructions']:,} instructions",
                file=sys.stderr,
                flush=True,
            )
        return found

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as workers:
        totals = dict(zip(jobs_to_run, workers.map(one, jobs_to_run)))
    return per_query(totals)


# The child: the measured process.


def _op(library: str, dsn: str, threads: int) -> tuple[Callable[[int], Callable[[], None]], Any]:
    kwargs: dict[str, Any] = {"autocommit": True}
    if library == RAW:
        conns = [psycopg.connect(dsn, **kwargs) for _ in range(threads)]

        def raw(i: int) -> Callable[[], None]:
            execute = conns[i].execute

            def op() -> None:
                execute("SELECT 1")

            return op

        return raw, conns
    if library == FLOOR:
        pool: Any = floor.MinimalPool(dsn, threads, kwargs)
    else:
        import poolwatch

        pool = poolwatch.ConnectionPool(
            dsn, min_size=threads, max_size=threads, kwargs=kwargs, open=True
        )
        pool.wait()
    connection = pool.connection

    def pooled(i: int) -> Callable[[], None]:
        def op() -> None:
            with connection() as conn:
                conn.execute("SELECT 1")

        return op

    return pooled, pool


def child(dsn: str, library: str, threads: int, queries: int) -> None:
    make, resource = _op(library, dsn, threads)
    share = queries // threads
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        op = make(i)
        for _ in range(WARM_UPS):
            op()
        start.wait()
        for _ in range(share):
            op()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for conn in resource if isinstance(resource, list) else [resource]:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\nIt is not part")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs valgrind (apt-get install valgrind). About ten minutes on an idle"
        " 2-core machine with the defaults: 16 children under cachegrind's simulation."
        " Progress goes to stderr, a line per child; the table (markdown) to stdout.",
    )
    parser.add_argument(
        "--dsn", help="the PostgreSQL server to connect to (default: start a throwaway cluster)"
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=QUERIES,
        help=f"queries per child, split between its threads (default {QUERIES:,})",
    )
    parser.add_argument(
        "--threads",
        default=",".join(map(str, THREADS)),
        help="comma-separated thread counts (default %(default)s)",
    )
    parser.add_argument(
        "--library",
        action="append",
        choices=LIBRARIES,
        help="measure only this one (repeatable; default: all)",
    )
    parser.add_argument(
        "--jobs", type=int, default=JOBS, help=f"valgrind children at a time (default {JOBS})"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes numbers separated by commas, not {args.threads!r}")
    if args.child:
        child(os.environ[DSN_VARIABLE], args.library[0], threads[0], args.queries)
        return 0
    if min(threads) < 1 or args.jobs < 1:
        parser.error("--threads and --jobs must be at least 1")
    if args.queries < max(threads):
        parser.error("--queries must be at least the largest thread count")
    libraries = args.library or list(LIBRARIES)
    if FLOOR not in libraries:
        libraries.append(FLOOR)  # the column in brackets is against it
    try:
        with harness.server(args.dsn, announce="cache profile") as dsn:
            rows = measure(dsn, libraries, threads, args.queries, args.jobs)
    except RuntimeError as ex:
        print(f"cache profile: {ex}", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
