"""Client on one CPU, PostgreSQL on the others, for the rows that compare against raw.

On the shared 2-core VM the scheduler moves the benchmark's threads and each
PostgreSQL backend between the two cores as it likes; a short run's throughput then
depends on where they landed, more than on the pool. With the libraries already
taking turns every 20 ms (`slices`), pinning the client to CPU 0 and every
PostgreSQL process to CPU 1 took the standard deviation of one round's ratio to raw
connections from 0.17 to 0.07 at T = 1 and from 0.15 to 0.09 at T = 16 (at T = 4 it
made no difference: 0.08 and 0.09); see the README's Benchmarks section. `pinned`
sets that up for one row and puts every affinity back at its end, so that later
rows (uvicorn workers, valgrind children) run as they would have.

Only a cluster this benchmark started (`adopt`, which `harness.server` calls) is
touched: its postmaster, found from the data directory we created, and that
postmaster's children. With a server given by --dsn only the client is pinned,
and the note says so. Where there is no affinity call (not Linux) or fewer than
two CPUs are available to us, nothing is pinned and the note says why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

#: data directories of the clusters this process started, and so may pin
_OWN: set[Path] = set()


def adopt(datadir: Path) -> Path:
    """Mark the cluster in *datadir* as started by this benchmark (so `pinned` may move it)."""
    resolved = datadir.resolve()
    _OWN.add(resolved)
    return resolved


def disown(datadir: Path) -> None:
    _OWN.discard(datadir.resolve())


def _cpu_list(cpus: list[int]) -> str:
    if len(cpus) == 1:
        return f"CPU {cpus[0]}"
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"CPUs {cpus[0]}-{cpus[-1]}"
    return "CPUs " + ", ".join(map(str, cpus))


def _parent(pid: int) -> int | None:
    """The parent of *pid* from /proc (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in brackets and may hold spaces: split after it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == pid:
            found.append(int(entry))
    return found


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def own_postmaster(dsn: str) -> int | None:
    """The pid of the postmaster serving *dsn*, if it is one of the clusters we started.

    Asks the server for the pid of our session's backend and takes that process's
    parent; it counts only if it is the pid a data directory of ours records. A
    server elsewhere (its pids mean nothing here) or someone else's never matches.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        # Read while the session lasts: once it closes its backend exits and the pid is free.
        parent = _parent(int(row[0])) if row else None
    for datadir in list(_OWN):
        if parent is not None and parent == _postmaster_pid(datadir):
            return parent
    return None


def _threads() -> list[int]:
    """Every thread of this process (os.sched_setaffinity(0) would move only the caller)."""
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def _set(pids: list[int], cpus: set[int]) -> dict[int, set[int]]:
    """Move each of *pids* to *cpus*; what each had before (the ones that vanished skipped)."""
    before = {}
    for pid in pids:
        try:
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, cpus)
        except ProcessLookupError:
            continue
        except PermissionError:  # not ours to move (another user's): left where it is
            before.pop(pid, None)
    return before


def _restore(current: list[int], before: dict[int, set[int]], default: set[int]) -> None:
    """Give each of *current* back what it had; ones born since get *default*."""
    for pid in current:
        try:
            os.sched_setaffinity(pid, before.get(pid, default))
        except (ProcessLookupError, PermissionError):  # gone, or never ours to move
            continue


def _unpinned(why: str) -> Iterator[str]:
    note = f"not pinned: {why}"
    print(f"  pinning: {note}", file=sys.stderr, flush=True)
    yield note


@contextmanager
def pinned(dsn: str) -> Iterator[str]:
    """For the block: this process on the first CPU, our cluster's processes on the others.

    Call it once every connection of the row is open: each connection forks a
    backend, and only the ones alive now are moved (backends forked later inherit
    the postmaster's affinity, which is moved too). Yields a note saying what was
    done, for the results; at the end every affinity changed is put back.
    """
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").is_dir():
        yield from _unpinned("this platform offers no CPU affinity (os.sched_setaffinity)")
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield from _unpinned(f"only {len(cpus)} CPU is available to this process")
        return
    client_cpus, server_cpus = {cpus[0]}, set(cpus[1:])
    postmaster = own_postmaster(dsn)
    client_before = _set(_threads(), client_cpus)
    server_before: dict[int, set[int]] = {}
    try:
        if postmaster is None:
            note = (
                f"client on {_cpu_list(cpus[:1])}; PostgreSQL not pinned (a server this"
                " run did not start)"
            )
        else:
            server_before = _set([postmaster, *_children(postmaster)], server_cpus)
            if postmaster in server_before:
                where = f"PostgreSQL on {_cpu_list(cpus[1:])}"
            else:
                where = "PostgreSQL not pinned (no permission to move its processes)"
            note = f"client on {_cpu_list(cpus[:1])}, {where}"
        print(f"  pinning: {note}", file=sys.stderr, flush=True)
        yield note
    finally:
        _restore(_threads(), client_before, set(cpus))
        if postmaster is not None and postmaster in server_before:
            default = server_before[postmaster]  # what a backend forked meanwhile inherits
            _restore([postmaster, *_children(postmaster)], server_before, default)
