"""Where a query's time goes, T threads on a pool of T against raw connections.

Every worker thread runs its own `cProfile` profiler (cProfile sees only the thread
that enabled it); their statistics are merged. The profiler's clock is wall time, so
a thread waiting for the GIL or for a lock is charged to the function it waits in.
For each library the table splits the thread-time of one query into: the pool
library's own code, including the time blocked taking its locks (cProfile shows a
lock taken by an explicit `acquire()` call, as poolwatch's fast paths do, as a call
of its own: that part is given separately; a lock taken by `with`, as psycopg_pool
does, stays inside the pool function's own time); and the query itself (psycopg's
`execute`: the round trip, psycopg's own lock, and the GIL waits on the way back).
Profiling slows everything, the pool and raw connections alike: read the shares and
the differences, not the absolute times.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import threading
from typing import Any

import psycopg
import psycopg_pool

import poolwatch

from .harness import _run_threads

SQL = "SELECT 1"
#: how cProfile names taking a threading.Lock or RLock, by call or by `with`
LOCK_METHODS = tuple(
    f"<method '{method}' of '_thread.{kind}' objects>"
    for method in ("acquire", "__enter__")
    for kind in ("lock", "RLock")
)
LIBRARIES = {
    "raw connections": (None, ""),
    "poolwatch": (poolwatch, "/poolwatch/"),
    "psycopg_pool 3.3": (psycopg_pool, "/psycopg_pool/"),
}


def _profiled(n: int, ops: int, execute_for: Any) -> pstats.Stats:
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def body(i: int, start: float) -> None:
        run = execute_for(i)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(ops):
            run()
        prof.disable()
        with lock:
            profiles.append(prof)

    _run_threads(n, body, 600.0)
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    return stats


def _split(stats: pstats.Stats, marker: str, queries: int) -> dict[str, float]:
    """µs of thread-time per query: total, pool code, blocked on locks from pool code, execute."""
    raw: Any = stats.stats  # type: ignore[attr-defined]
    total = own = blocked = execute = 0.0
    for (filename, _line, name), (_cc, _nc, tt, ct, callers) in raw.items():
        total += tt
        if marker and marker in filename:
            own += tt
        if marker and name.startswith(LOCK_METHODS):
            for (cfile, _cl, _cn), cstat in callers.items():
                if marker in cfile:
                    blocked += cstat[2]
        if name == "execute" and filename.endswith("psycopg/connection.py"):
            execute = max(execute, ct)
    scale = 1e6 / queries
    return {
        "total": total * scale,
        "own": own * scale,
        "blocked": blocked * scale,
        "execute": execute * scale,
    }


def measure(dsn: str, sizes: tuple[int, ...], queries: int, rounds: int = 3) -> dict[int, Any]:
    """threads -> library -> the split above, medians over *rounds*."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        ops = max(20, queries // n)
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(n)]
        pools = {
            name: module.ConnectionPool(
                dsn, min_size=n, max_size=n, open=True, kwargs={"autocommit": True}
            )
            for name, (module, _m) in LIBRARIES.items()
            if module is not None
        }
        try:
            for pool in pools.values():
                pool.wait(timeout=60)
            splits: dict[str, list[dict[str, float]]] = {}
            for _ in range(rounds):
                for name, (module, marker) in LIBRARIES.items():
                    if module is None:

                        def execute_for(i: int, conns: list[Any] = conns) -> Any:
                            return lambda: conns[i].execute(SQL)
                    else:
                        connection = pools[name].connection

                        def execute_for(i: int, connection: Any = connection) -> Any:
                            def run() -> None:
                                with connection() as conn:
                                    conn.execute(SQL)

                            return run

                    stats = _profiled(n, ops, execute_for)
                    splits.setdefault(name, []).append(_split(stats, marker, n * ops))
            out[n] = {
                name: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
                for name, runs in splits.items()
            }
        finally:
            for pool in pools.values():
                pool.close()
            for c in conns:
                c.close()
    return out


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| threads = pool size | library | thread-time per query (µs) | in the pool's own code"
        " | of which blocked in `lock.acquire()` | in psycopg's execute | the rest (benchmark"
        " loop, profiler) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, by_lib in results.items():
        for lib, s in by_lib.items():
            pool = s["own"] + s["blocked"]
            rest = s["total"] - pool - s["execute"]
            lines.append(
                f"| {n} | {lib} | {s['total']:,.0f} | {pool:,.1f} | {s['blocked']:,.1f}"
                f" | {s['execute']:,.0f} | {rest:,.0f} |"
            )
    return "\n".join(lines)
