"""CPU instructions per checkout and per query, counted by valgrind: deterministic rows.

On this shared 2-core VM the wall clock moves by a third between runs, so a 5% goal
cannot be judged from timings; valgrind's instruction count does not move with the
machine's load (cachegrind with its cache simulation off: within 0.2% of callgrind's
count, in about 60% of the time; the children run with PYTHONHASHSEED=0, since
string hashing changes what dictionaries do). Every count runs a child Python under
valgrind and reads the instructions it executed: in the client process only (all its
threads), never PostgreSQL's. A child opens its pool (or raw connection), warms up by running every
operation of its family 200 times, then runs the measured operation N times. The same
child with N = 0 (warm-up only) is counted once per family (library; sync, async or
query); a row's figure is (count at N - count at 0) / N: start-up, imports, connecting
and warm-up drop out.

For the same code a count repeats to within a few instructions per operation. What
moves it is the layout of the interpreter's dictionaries: another hash seed (or an
unrelated change to what is imported) moved the sync connection() rows by up to 1%
(poolwatch 16,319 to 16,479 over seeds 0 to 3; the raw query by 0.1%). Read a
difference under 1% between two rows as none.

Rows:

- **checkout**: take and give back an idle connection, pool of 1, no query, for the
  four cases (sync/async, getconn+putconn and connection()), for poolwatch with call
  sites off and on, poolwatch before issue 17 (benchmarks/before.py) and psycopg_pool;
- **query**: SELECT 1 in autocommit, one thread, one connection: a raw psycopg
  connection's ``execute`` against a ``with pool.connection() as c: c.execute(...)``.

Results (`measure()` returns `Results`): ``results.per_op(case, library)`` and
``results.per_query(library)``, None for a row that was not counted (``results.notes``
says why); the dictionaries behind them are ``results.checkout[case][library]`` and
``results.query[library]``, instructions as floats.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psycopg

from poolwatch.pool._compiled import PURE_PYTHON_VARIABLE

from . import before, floor, harness

CASES = ("sync getconn+putconn", "sync connection()", "async getconn+putconn", "async connection()")
QUERY = "SELECT 1"
#: what a family's 0-operation count runs: the warm-up, then nothing
WARM_UP = "warm-up only"
POOLWATCH = "poolwatch"
SITES = "poolwatch + call sites"
#: poolwatch with POOLWATCH_PURE_PYTHON=1: its connection() blocks in Python, not _hot.c
PURE = "poolwatch, Python blocks"
BEFORE = before.NAME
BASELINE = "psycopg_pool 3.3"  # the name the other tables give it
RAW = "raw psycopg connection"
FLOOR = floor.NAME  # the least a Python pool does per query: see benchmarks/floor.py
CHECKOUT_LIBRARIES = (POOLWATCH, PURE, SITES, BEFORE, BASELINE)
QUERY_LIBRARIES = (RAW, FLOOR, POOLWATCH, PURE, BEFORE, BASELINE)
#: the only checkout case where PURE differs from POOLWATCH (sync blocks are compiled)
PURE_CASES = ("sync connection()",)
OPS = 5_000
QUERIES = 2_000
WARM_UPS = 200
JOBS = 2  # the machine's cores; counts do not depend on what runs beside them
#: the DSN reaches the child through its environment: valgrind echoes the command line
DSN_VARIABLE = "POOLWATCH_INSTRUCTIONS_DSN"
ROOT = Path(__file__).resolve().parent.parent
#: cachegrind without its cache simulation counts instructions (all the process's
#: threads) as callgrind does, within 0.2% of it on the same child, in about 60% of the time
VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")


@dataclass(frozen=True)
class Count:
    """One valgrind child: *ops* times *case* in *family* ("sync", "async", "query")."""

    library: str
    family: str
    case: str
    ops: int

    def zero(self) -> Count:
        """The family's warm-up-only count, which this count's figure subtracts."""
        return Count(self.library, self.family, WARM_UP, 0)

    def label(self) -> str:
        what = self.case if self.ops else f"{self.family} {WARM_UP}"
        return f"{self.library}, {what}, {self.ops:,} ops"


@dataclass(frozen=True)
class Results:
    """Instructions per operation, as floats.

    ``checkout[case][library]``: per take-and-return, *case* one of CASES, *library*
    one of CHECKOUT_LIBRARIES. ``query[library]``: the client's per SELECT 1, *library*
    one of QUERY_LIBRARIES. A row that could not be counted is absent, and ``notes``
    says why. ``ops`` and ``queries`` are the N of the counts.
    """

    checkout: dict[str, dict[str, float]]
    query: dict[str, float]
    ops: int
    queries: int
    notes: tuple[str, ...] = field(default=())

    def per_op(self, case: str, library: str) -> float | None:
        return self.checkout.get(case, {}).get(library)

    def per_query(self, library: str) -> float | None:
        return self.query.get(library)


def plan(ops: int, queries: int, with_before: bool = True) -> list[Count]:
    """Every count a full measure needs: one warm-up-only count per family, no more."""
    checkout = [lib for lib in CHECKOUT_LIBRARIES if with_before or lib != BEFORE]
    query = [lib for lib in QUERY_LIBRARIES if with_before or lib != BEFORE]
    counts: list[Count] = []
    for family in ("sync", "async"):
        for library in checkout:
            cases = [c for c in CASES if c.startswith(family)]
            if library == PURE:
                cases = [c for c in cases if c in PURE_CASES]
            if cases:
                counts.append(Count(library, family, WARM_UP, 0))
                counts += [Count(library, family, c, ops) for c in cases]
    for library in query:
        counts += [Count(library, "query", WARM_UP, 0), Count(library, "query", QUERY, queries)]
    return counts


def per_operation(totals: Mapping[Count, int], notes: Iterable[str] = ()) -> Results:
    """Each count's instructions less its family's warm-up-only count, divided by its N."""
    checkout: dict[str, dict[str, float]] = {}
    query: dict[str, float] = {}
    ops = queries = 0
    for count, total in totals.items():
        if count.ops == 0:
            continue
        if count.zero() not in totals:
            raise ValueError(f"no warm-up-only count for {count.label()}")
        figure = (total - totals[count.zero()]) / count.ops
        if count.family == "query":
            query[count.library] = figure
            queries = count.ops
        else:
            checkout.setdefault(count.case, {})[count.library] = figure
            ops = count.ops
    return Results(checkout, query, ops, queries, tuple(notes))


def _ratio(value: float, base: float | None) -> str:
    return "—" if base is None else f"{value / base:.3f}"


def table(results: Results) -> str:
    """Both tables, markdown, checkout first; rows in the CASES and libraries' order."""
    lines = [
        f"Per take-and-return (N = {results.ops:,}):",
        "",
        "| case | library | instructions | vs before | vs psycopg_pool | call sites add |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in CASES:
        by_lib = results.checkout.get(case, {})
        old, base = by_lib.get(BEFORE), by_lib.get(BASELINE)
        for lib in CHECKOUT_LIBRARIES:
            if lib not in by_lib:
                continue
            value = by_lib[lib]
            extra = ""
            if lib == SITES and POOLWATCH in by_lib:
                extra = f"{value - by_lib[POOLWATCH]:+,.0f}"
            lines.append(
                f"| {case} | {lib} | {value:,.0f} | {_ratio(value, old)}"
                f" | {_ratio(value, base)} | {extra} |"
            )
    lines += [
        "",
        f"Per query, the client's instructions (N = {results.queries:,}):",
        "",
        "| library | instructions per query | pool's share ((pool - raw) / pool) | pool / raw |",
        "|---|---:|---:|---:|",
    ]
    raw = results.query.get(RAW)
    for lib in QUERY_LIBRARIES:
        if lib not in results.query:
            continue
        value = results.query[lib]
        share = "—" if raw is None or lib == RAW else f"{(value - raw) / value:.1%}"
        lines.append(f"| {lib} | {value:,.0f} | {share} | {_ratio(value, raw)} |")
    lines += [f"\nNote: {note}" for note in results.notes]
    return "\n".join(lines)


def precompile(before_path: Path | None = None) -> None:
    """Write every bytecode cache the children read, so that no child compiles.

    Children never write caches (PYTHONDONTWRITEBYTECODE): a child that compiled a
    module would count the compiler, and only the first child would.
    """
    spec = find_spec("poolwatch")
    dirs = [Path(d) for d in (spec.submodule_search_locations or [])] if spec else []
    dirs += [ROOT / "benchmarks", *([before_path] if before_path else [])]
    for directory in dirs:
        compileall.compile_dir(directory, quiet=1)


def count(dsn: str, job: Count, before_path: Path | None) -> int:
    """The instructions the child for *job* executes, start-up included."""
    cmd = [*VALGRIND, sys.executable]
    cmd += ["-m", "benchmarks.instructions", "--child", "--library", job.library]
    cmd += ["--family", job.family, "--case", job.case, "--ops", str(job.ops)]
    cmd += ["--before-path", str(before_path)] if before_path else []
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env[DSN_VARIABLE] = dsn
    env.pop(PURE_PYTHON_VARIABLE, None)
    if job.library == PURE:
        env[PURE_PYTHON_VARIABLE] = "1"
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    found = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
    if run.returncode != 0 or found is None:
        tail = run.stderr.replace(dsn, "<dsn>")[-1500:]
        raise RuntimeError(f"counting {job.label()} failed (exit {run.returncode}):\n{tail}")
    return int(found.group(1).replace(",", ""))


def measure(dsn: str, ops: int = OPS, queries: int = QUERIES, jobs: int = JOBS) -> Results:
    """Count every row (see the module's doc), *jobs* valgrind children at a time."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not on PATH: apt-get install valgrind")
    try:  # fail in a second, not after a child's 30 s of waiting for its pool
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.Error as ex:
        raise RuntimeError(f"cannot connect to the server: {ex}") from None
    notes: list[str] = []
    old = before.load()
    before_path = Path(old.__file__).parent.parent if old and old.__file__ else None
    if before_path is None:
        notes.append(f"no `{BEFORE}` rows: git could not give commit {before.COMMIT} here.")
    precompile(before_path)
    counts = plan(ops, queries, with_before=before_path is not None)
    finished = itertools.count(1)
    started = time.monotonic()

    def one(job: Count) -> int:
        t0 = time.monotonic()
        total = count(dsn, job, before_path)
        print(
            f"  instructions: {next(finished)}/{len(counts)} {job.label()}: {total:,}"
            f" ({time.monotonic() - t0:.0f} s, {time.monotonic() - started:.0f} s in all)",
            file=sys.stderr,
            flush=True,
        )
        return total

    workers = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        totals = dict(zip(counts, workers.map(one, counts)))
    finally:
        workers.shutdown(cancel_futures=True)  # after a failure, start no more children
    return per_operation(totals, notes)


# The child: the measured process. Everything above it runs in the parent.


def _library(name: str, before_path: str | None) -> Any:
    if name in (POOLWATCH, SITES, PURE):
        import poolwatch

        return poolwatch
    if name == BEFORE:
        sys.path.insert(0, str(before_path))
        import poolwatch_before  # type: ignore[import-not-found]

        return poolwatch_before
    if name == BASELINE:
        import psycopg_pool

        return psycopg_pool
    raise ValueError(f"no pool library called {name!r}")


# Each loop is written out, as a user would write it: a helper called per operation
# would add its own call to every figure. Warm-up and measured runs go through the
# same loop, so that a call site is the same line in both.


def _raw_queries(conn: Any, n: int) -> None:
    for _ in range(n):
        conn.execute(QUERY)


def _pool_queries(pool: Any, n: int) -> None:
    for _ in range(n):
        with pool.connection() as conn:
            conn.execute(QUERY)


def _getputs(pool: Any, n: int) -> None:
    for _ in range(n):
        pool.putconn(pool.getconn())


def _blocks(pool: Any, n: int) -> None:
    for _ in range(n):
        with pool.connection():
            pass


async def _agetputs(pool: Any, n: int) -> None:
    for _ in range(n):
        await pool.putconn(await pool.getconn())


async def _ablocks(pool: Any, n: int) -> None:
    for _ in range(n):
        async with pool.connection():
            pass


def _track_sites(pool: Any) -> None:
    from poolwatch.insight.callsites import SiteFinder

    pool.track_call_sites(SiteFinder().checkout_site)


def child(
    dsn: str, library: str, family: str, case: str, ops: int, before_path: str | None
) -> None:
    """Warm up every operation of *family*, then run *case* *ops* times."""
    if family == "query" and library == RAW:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _raw_queries(conn, WARM_UPS)
            _raw_queries(conn, ops)
        return
    if family == "query" and library == FLOOR:
        least = floor.MinimalPool(dsn, 1, {"autocommit": True})
        _pool_queries(least, WARM_UPS)
        _pool_queries(least, ops)
        least.close()
        return
    module = _library(library, before_path)
    if family == "query":
        kwargs = {"autocommit": True}
        with module.ConnectionPool(dsn, min_size=1, max_size=1, kwargs=kwargs, open=False) as pool:
            pool.wait()
            _pool_queries(pool, WARM_UPS)
            _pool_queries(pool, ops)
        return
    if family == "sync":
        with module.ConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            pool.wait()
            if library == SITES:
                _track_sites(pool)
            _getputs(pool, WARM_UPS)
            _blocks(pool, WARM_UPS)
            (_getputs if case == CASES[0] else _blocks)(pool, ops)
        return

    async def main() -> None:
        async with module.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as apool:
            await apool.wait()
            if library == SITES:
                _track_sites(apool)
            await _agetputs(apool, WARM_UPS)
            await _ablocks(apool, WARM_UPS)
            await (_agetputs if case == CASES[2] else _ablocks)(apool, ops)

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\nResults")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs valgrind (apt-get install valgrind). About two minutes on an idle"
        " 2-core machine: 32 children, each a few seconds under valgrind. Progress goes to"
        " stderr, a line per count; the tables (markdown) to stdout.",
    )
    parser.add_argument(
        "--dsn", help="the PostgreSQL server to connect to (default: start a throwaway cluster)"
    )
    parser.add_argument(
        "--ops", type=int, default=OPS, help=f"N for the checkout rows (default {OPS:,})"
    )
    parser.add_argument(
        "--queries", type=int, default=QUERIES, help=f"N for the query rows (default {QUERIES:,})"
    )
    parser.add_argument(
        "--jobs", type=int, default=JOBS, help=f"valgrind children at a time (default {JOBS})"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--family", choices=("sync", "async", "query"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--before-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        dsn = os.environ[DSN_VARIABLE]
        child(dsn, args.library, args.family, args.case, args.ops, args.before_path)
        return 0
    if min(args.ops, args.queries, args.jobs) < 1:
        parser.error("--ops, --queries and --jobs must be at least 1")
    try:
        with harness.server(args.dsn, announce="instructions") as dsn:
            print(table(measure(dsn, args.ops, args.queries, args.jobs)))
    except RuntimeError as ex:
        print(f"instructions: {ex}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
