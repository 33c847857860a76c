"""benchmarks.pinning: which processes it moves to which CPUs, and that it puts them back.

Every affinity is read back from the kernel (os.sched_getaffinity); the server's
processes are found independently of the helper, from pg_stat_activity and ps.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator

import psycopg
import pytest

from benchmarks import harness, pinning, throughput
from poolwatch.embedded import Cluster

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning the client and the server apart needs two CPUs and Linux affinity calls",
)


@pytest.fixture(scope="module")
def own_dsn() -> Iterator[str]:
    """A cluster started the way the benchmark starts its own (so pinning may move it)."""
    with harness.server(None, max_connections=20) as dsn:
        yield dsn


def _server_pids(dsn: str) -> list[int]:
    """The postmaster and every process it lists in pg_stat_activity (backends and helpers)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL")
        ]
        me = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert me is not None
        ps = subprocess.run(
            ["ps", "-o", "ppid=", "-p", str(me[0])], capture_output=True, text=True, check=True
        )
    postmaster = int(ps.stdout.strip())
    alive = [pid for pid in pids if pid != me[0] and os.path.exists(f"/proc/{pid}")]
    return [postmaster, *alive]


def _affinities(pids: list[int]) -> dict[int, set[int]]:
    return {pid: os.sched_getaffinity(pid) for pid in pids if os.path.exists(f"/proc/{pid}")}


def _parked_thread() -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    thread = threading.Thread(target=done.wait, args=(60,), daemon=True)
    thread.start()
    return thread, done


def test_the_client_goes_to_the_first_cpu_and_our_cluster_to_the_others(own_dsn: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    conns = [psycopg.connect(own_dsn, autocommit=True) for _ in range(3)]
    older, release_older = _parked_thread()  # like a pool's worker: started before pinning
    try:
        server = _server_pids(own_dsn)
        assert len(server) >= 4  # the postmaster and at least our three backends
        before = _affinities(server)
        with pinning.pinned(own_dsn) as note:
            assert note == f"client on CPU {cpus[0]}, PostgreSQL on {pinning._cpu_list(cpus[1:])}"
            assert os.sched_getaffinity(0) == {cpus[0]}
            assert older.native_id is not None
            assert os.sched_getaffinity(older.native_id) == {cpus[0]}
            pinned = _affinities(server)
            assert pinned and all(got == set(cpus[1:]) for got in pinned.values()), pinned
            # A connection opened now forks from the moved postmaster: it lands there too.
            with psycopg.connect(own_dsn, autocommit=True) as late:
                row = late.execute("SELECT pg_backend_pid()").fetchone()
                assert row is not None
                assert os.sched_getaffinity(row[0]) == set(cpus[1:])
            newer, release_newer = _parked_thread()  # outlives the block
        assert os.sched_getaffinity(0) == set(cpus)
        assert os.sched_getaffinity(older.native_id) == set(cpus)
        assert newer.native_id is not None
        assert os.sched_getaffinity(newer.native_id) == set(cpus)
        after = _affinities(server)
        assert after == {pid: before[pid] for pid in after}
        release_newer.set()
    finally:
        release_older.set()
        for conn in conns:
            conn.close()


def test_a_server_it_did_not_start_is_left_alone(own_dsn: str, pg: Cluster, dsn: str) -> None:
    # The session's cluster was not started by harness.server; one of ours exists meanwhile.
    cpus = sorted(os.sched_getaffinity(0))
    with psycopg.connect(dsn, autocommit=True):
        server = _server_pids(dsn)
        before = _affinities(server)
        assert all(got == set(cpus) for got in before.values())  # so a move would show
        with pinning.pinned(dsn) as note:
            assert "PostgreSQL not pinned" in note
            assert os.sched_getaffinity(0) == {cpus[0]}  # the client alone is pinned
            assert _affinities(server) == before
        assert os.sched_getaffinity(0) == set(cpus)


def test_the_postmaster_is_found_every_time(own_dsn: str) -> None:
    # The backend answering pg_backend_pid() exits when its session closes: the parent
    # must be read while it is alive, or the check would randomly refuse our own server.
    postmaster = _server_pids(own_dsn)[0]
    assert [pinning.own_postmaster(own_dsn) for _ in range(30)] == [postmaster] * 30


def test_with_one_cpu_nothing_is_pinned(own_dsn: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    server = _server_pids(own_dsn)
    before = _affinities(server)
    os.sched_setaffinity(0, {cpus[-1]})
    try:
        with pinning.pinned(own_dsn) as note:
            assert note == "not pinned: only 1 CPU is available to this process"
            assert os.sched_getaffinity(0) == {cpus[-1]}
            assert _affinities(server) == before
    finally:
        os.sched_setaffinity(0, set(cpus))


def test_without_affinity_calls_it_says_so(own_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_setaffinity")
    with pinning.pinned(own_dsn) as note:
        assert note.startswith("not pinned: this platform offers no CPU affinity")


def test_the_vs_raw_rows_run_pinned_and_report_it(own_dsn: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    notes: list[str] = []
    results = throughput.vs_raw(own_dsn, rounds=1, seconds=0.05, sizes=(1, 2), notes=notes)
    assert set(results) == {"1", "2"}
    assert notes == [f"client on CPU {cpus[0]}, PostgreSQL on {pinning._cpu_list(cpus[1:])}"]
    assert os.sched_getaffinity(0) == set(cpus)
    assert all(got == set(cpus) for got in _affinities(_server_pids(own_dsn)).values())
