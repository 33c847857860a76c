"""Multiprocess state files: identity, forks, pid reuse, liveness, compaction, hostile files.

Every test here runs real worker processes (or real pools in this process) against
the suite's PostgreSQL, and reads the directory back the way a scrape does.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool
from poolwatch.metrics.multiprocess import MultiprocessLink, compact_directory, read_directory
from poolwatch.metrics.multiprocess_files import (
    MAX_POOLS_PER_FILE,
    StateFile,
    decode,
    file_name,
    read_bounded,
    write_atomically,
)
from poolwatch.metrics.prometheus import PoolCollector
from poolwatch.metrics.state import PoolState

from .scrape import exporter, require_tool

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parents[2]


def acquired(states: list[PoolState], pool: str = "mp") -> int:
    """The exported acquire count (outcome ok) of *pool*, 0 when it has no series."""
    for state in states:
        if state.pool == pool:
            hist = state.histograms.get(("acquire", ("ok",)))
            return sum(hist.counts) if hist else 0
    return 0


def run_worker(directory: Path, dsn: str, *args: str, new_pid_namespace: bool = False) -> None:
    command = [sys.executable, "-m", "tests.metrics.mp_worker", *args]
    if new_pid_namespace:
        # A fresh PID namespace: the worker is pid 1 there, every time, as in a container.
        command = [require_tool("unshare"), "--pid", "--fork", *command]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "POOLWATCH_TEST_DSN": dsn}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def linked(directory: Path) -> tuple[PoolCollector, MultiprocessLink]:
    collector = PoolCollector()
    CollectorRegistry().register(collector)
    link = MultiprocessLink(str(directory), collector)
    collector.multiprocess = link
    return collector, link


ROUNDS = 40


def test_a_pool_recreated_under_one_name_keeps_every_count(dsn, tmp_path):
    """Finding 2: closing a pool and opening another under its name loses no count.

    The state is published while each pool is open (as the writer thread does once a
    second), the pool then works some more and closes; the next pool may take the
    old one's address (id()), which the state must not be keyed by.
    """
    collector, link = linked(tmp_path)
    exported: list[int] = []
    addresses: set[int] = set()
    for _ in range(ROUNDS):
        pool = ConnectionPool(dsn, min_size=1, max_size=2, name="mp", open=True)
        collector.add(pool)
        addresses.add(id(pool))
        for _ in range(5):
            with pool.connection():
                pass
        link.write()
        exported.append(acquired(read_directory(tmp_path)))
        for _ in range(5):
            with pool.connection():
                pass
        pool.close()
        del pool
        gc.collect()  # frees the old pool, so that the next one may take its address
    exported.append(acquired(link.read_all()))
    assert exported == sorted(exported), f"the counter went backwards: {exported}"
    assert exported[-1] == 10 * ROUNDS
    # CPython hands a freed pool's address to a later one now and then: the case at stake
    assert len(addresses) < ROUNDS, "no address was reused: raise ROUNDS"


def test_a_process_that_keeps_making_new_names_stays_readable(dsn, tmp_path, monkeypatch):
    """Red team: past the readers' bound of pool names, a process's whole file was refused.

    Unnamed pools are "pool-1", "pool-2"...: each closed one was kept forever. With the
    bound lowered (the real one is MAX_POOLS_PER_FILE // 2), the oldest closed names are
    forgotten, the newest and the open ones keep every count, and the file stays readable.
    """
    from poolwatch.metrics import multiprocess

    assert multiprocess.MAX_RETIRED_NAMES < MAX_POOLS_PER_FILE
    monkeypatch.setattr(multiprocess, "MAX_RETIRED_NAMES", 3)
    collector, link = linked(tmp_path)
    keeper = ConnectionPool(dsn, min_size=1, max_size=1, name="keeper", open=True)
    collector.add(keeper)
    try:
        with keeper.connection():
            pass
        for i in range(6):
            pool = ConnectionPool(dsn, min_size=1, max_size=1, name=f"gone-{i}", open=True)
            collector.add(pool)
            for _ in range(i + 1):
                with pool.connection():
                    pass
            link.write()
            pool.close()
            del pool
            gc.collect()  # the collector holds pools weakly: the closed one is gone now
            link.write()
        states = read_directory(tmp_path)
    finally:
        keeper.close()
    names = {s.pool for s in states}
    assert not names & {"gone-0", "gone-1"}, names  # the oldest closed names are forgotten
    assert {"gone-3", "gone-4", "gone-5", "keeper"} <= names
    assert len(names) <= 3 + 2  # the bound, plus the open pool and the newest still in memory
    assert [acquired(states, f"gone-{i}") for i in (3, 4, 5)] == [4, 5, 6]
    assert acquired(states, "keeper") == 1


def test_pid_reuse_keeps_a_dead_workers_counts(dsn, tmp_path):
    """Finding 3: two workers that both run as pid 1 (fresh PID namespaces) both count."""
    run_worker(tmp_path, dsn, "work", "30", new_pid_namespace=True)
    run_worker(tmp_path, dsn, "work", "12", new_pid_namespace=True)
    states = read_directory(tmp_path)
    assert acquired(states) == 42
    # Both exited: none of their gauges stay, whatever pid 1 is here.
    assert all(("connections_max", ()) not in s.scalars for s in states)


def test_a_forked_child_never_writes_its_parents_state(dsn, tmp_path):
    """Finding 4: the parent made 100 checkouts, its forked child 1: 101, not 201."""
    run_worker(tmp_path, dsn, "fork", "100", "1")
    assert acquired(read_directory(tmp_path)) == 101


def test_a_forked_child_that_does_nothing_adds_nothing(dsn, tmp_path):
    run_worker(tmp_path, dsn, "fork", "40", "0")
    assert acquired(read_directory(tmp_path)) == 40


def test_a_pool_made_before_fork_and_opened_in_the_child_counts_there(dsn, tmp_path):
    """gunicorn --preload: the pool object is made (not opened) in the master."""
    run_worker(tmp_path, dsn, "preload", "7")
    assert acquired(read_directory(tmp_path)) == 7


@pytest.mark.parametrize("linked_in", ["child", "parent"])
def test_a_multiprocessing_child_keeps_the_counts_of_its_last_second(dsn, tmp_path, linked_in):
    """A multiprocessing child (fork) ends with os._exit: atexit never runs there.

    Its counts must still be written when it ends, not only by the writer's next
    periodic write, which a short-lived child (a Celery prefork task, a Pool worker)
    never lives to see.
    """
    run_worker(tmp_path, dsn, "mpchild", "25", linked_in)
    assert acquired(read_directory(tmp_path)) == 25


def test_a_dead_workers_gauges_go_and_its_counters_stay(dsn, tmp_path):
    """A worker that exits takes its gauges along at once; its counts stay."""
    collector, link = linked(tmp_path)
    with ConnectionPool(dsn, min_size=1, max_size=4, name="mp") as pool:
        collector.add(pool)
        pool.wait()
        with pool.connection():
            pass
        run_worker(tmp_path, dsn, "work", "5")
        states = link.read_all()
        assert acquired(states) == 6
        # only this process is alive: its max_size alone
        (mine,) = [s for s in states if s.pool == "mp"]
        assert mine.scalars[("connections_max", ())] == 4


def write_good_state(dsn: str, directory: Path) -> tuple[ConnectionPool, MultiprocessLink]:
    """An open pool "good" with 3 checkouts, its state written by a real link."""
    collector, link = linked(directory)
    pool = ConnectionPool(dsn, min_size=1, max_size=2, name="good", open=True)
    collector.add(pool)
    pool.wait()
    for _ in range(3):
        with pool.connection():
            pass
    link.write()
    return pool, link


def mutated(good: dict, change) -> str:  # type: ignore[type-arg,no-untyped-def]
    data = json.loads(json.dumps(good))
    entry = data["pools"][0]
    entry["pool"] = "bad"
    change(data, entry)
    return json.dumps(data)


def set_scalar(key: str, value: object):  # type: ignore[no-untyped-def]
    def change(data, entry):  # type: ignore[no-untyped-def]
        for row in entry["scalars"]:
            if row[0] == key:
                row[2] = value

    return change


HOSTILE = {
    "deep nesting": lambda good: "[" * 200_000 + "]" * 200_000,
    "huge pid": lambda good: mutated(good, lambda d, e: d.__setitem__("pid", 10**30)),
    "Infinity": lambda good: mutated(good, set_scalar("waits", float("inf"))),
    "NaN counter": lambda good: mutated(good, set_scalar("used_seconds", float("nan"))),
    "400 digits": lambda good: mutated(good, set_scalar("waits", 10**400)),
    "negative counter": lambda good: mutated(good, set_scalar("waits", -1000)),
    "non-string label": lambda good: mutated(
        good, lambda d, e: e["scalars"].append(["errors", [5, None], 1])
    ),
    "label outside the contract": lambda good: mutated(
        good, lambda d, e: e["histograms"][0][1].__setitem__(0, "bogus")
    ),
    "duplicate series": lambda good: mutated(good, lambda d, e: e["scalars"].extend(e["scalars"])),
    "1 MB pool name": lambda good: mutated(
        good, lambda d, e: e.__setitem__("pool", "x" * 1_000_000)
    ),
    "not an object": lambda good: "[1, 2, 3]",
    # Written as JSON escapes (ensure_ascii), as another writer could: text that cannot
    # be encoded used to make /pools and /api/live answer 500 for every pool.
    "lone surrogate in the name": lambda good: mutated(
        good, lambda d, e: e.__setitem__("pool", "bad\ud800")
    ),
    "lone surrogate in an error kind": lambda good: mutated(
        good, lambda d, e: e["scalars"].append(["errors", ["k\udfff", "08"], 1])
    ),
    "a number as a string": lambda good: mutated(good, set_scalar("waits", "NaN")),
}


def test_hostile_state_files_are_skipped_and_counted(dsn, tmp_path, caplog_all):
    """Finding 6: odd files never break /metrics, /pools or /api/live, nor add up."""
    pool, link = write_good_state(dsn, tmp_path)
    good = json.loads(link.path.read_text())
    for i, (_, make) in enumerate(HOSTILE.items()):
        (tmp_path / f"poolwatch-hostile{i}.json").write_text(make(good))
    # A symlink to a valid file elsewhere is not followed: it could point anywhere.
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text(mutated(good, lambda d, e: None))
    (tmp_path / "poolwatch-symlink.json").symlink_to(outside)
    rejected_files = len(HOSTILE) + 1
    try:
        with exporter(multiproc_dir=str(tmp_path)) as srv:
            answers = {
                path: httpx.get(srv.url + path, timeout=30)
                for path in ("/metrics", "/pools", "/api/live", "/metrics")
            }
    finally:
        pool.close()
    for path, r in answers.items():
        assert r.status_code == 200, (path, r.text[:300])
        assert len(r.content) < 200_000, path
        assert '"bad"' not in r.text and "bogus" not in r.text, path
    text = answers["/metrics"].text
    assert 'poolwatch_acquire_seconds_count{pool="good",outcome="ok"} 3' in text
    assert f"poolwatch_exporter_state_files_rejected_total {rejected_files}" in text
    assert [p["name"] for p in answers["/pools"].json()["pools"]] == ["good"]
    # One log line per bad file, however many scrapes read it.
    lines = [r for r in caplog_all.records if "state file" in r.getMessage()]
    assert len(lines) == rejected_files, [r.getMessage()[:120] for r in lines]


def test_the_writer_follows_no_planted_symlink(dsn, tmp_path):
    pool, link = write_good_state(dsn, tmp_path)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("precious")
    try:
        for name in (link.path.name, f"poolwatch-{os.getpid()}.tmp", link.path.stem + ".tmp"):
            (tmp_path / name).unlink(missing_ok=True)
            (tmp_path / name).symlink_to(victim)
        link.write()
    finally:
        pool.close()
    assert victim.read_text() == "precious"
    assert link.path.is_file() and not link.path.is_symlink()
    assert acquired(read_directory(tmp_path), "good") == 3


def test_a_world_writable_directory_is_warned_about(tmp_path, caplog_all):
    tmp_path.chmod(0o777)
    linked(tmp_path)
    warnings = [r for r in caplog_all.records if r.levelno == logging.WARNING]
    assert any("world-writable" in r.getMessage() for r in warnings)


def test_dead_workers_are_compacted_into_one_file(dsn, tmp_path):
    """5,000 exited workers' files become one retired file, with every count kept."""
    source = tmp_path / "one"
    source.mkdir()
    run_worker(source, dsn, "work", "2")
    (worker_file,) = source.glob("poolwatch-*.json")
    data = json.loads(worker_file.read_text())
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    dead = 5000
    for i in range(dead):
        data["incarnation"] = f"{i:032x}"
        (fleet / f"poolwatch-{i:032x}.json").write_text(json.dumps(data))
    started = time.perf_counter()
    first = read_directory(fleet)
    compacting = time.perf_counter() - started
    started = time.perf_counter()
    second = read_directory(fleet)
    compacted = time.perf_counter() - started
    print(f"\nscrape read of {dead} dead workers: {compacting:.3f}s, then {compacted:.4f}s")
    assert acquired(first) == acquired(second) == 2 * dead
    left = sorted(p.name for p in fleet.iterdir())
    assert len(left) <= 2, left[:5]


def test_a_process_compacted_while_alive_does_not_count_twice(dsn, tmp_path, caplog_all):
    """A process silent for COMPACT_AFTER is compacted; if it was only paused, it resumes
    publishing only what it counted since, so nothing is counted twice."""
    pool, link = write_good_state(dsn, tmp_path)
    try:
        first = link.path
        content = decode(read_bounded(first))
        # What a reader does once the file has not changed for COMPACT_AFTER seconds:
        compact_directory(tmp_path, [(first, content)])
        assert not first.exists()
        assert acquired(read_directory(tmp_path), "good") == 3
        for _ in range(2):
            with pool.connection():
                pass
        link.write()  # the process resumes
        assert link.path != first
        assert acquired(read_directory(tmp_path), "good") == 5
        link.write()
        assert acquired(link.read_all(), "good") == 5
    finally:
        pool.close()
    assert acquired(link.read_all(), "good") == 5
    assert any(
        "compacted while this process was alive" in r.getMessage() for r in caplog_all.records
    )


def test_a_process_that_writes_while_being_compacted_loses_no_count(dsn, tmp_path):
    """A reader decides from the file it read that a process is dead (silent for
    COMPACT_AFTER); the process resumes and writes again before the reader compacts.

    The compaction must not fold in the stale copy and delete the newer file: the
    counts between the two would be gone, and the exported counter would go back.
    """
    pool, link = write_good_state(dsn, tmp_path)
    try:
        path = link.path
        stale = decode(read_bounded(path))  # what the reader read: 3 checkouts
        for _ in range(2):
            with pool.connection():
                pass
        link.write()  # the process resumes meanwhile: 5 checkouts in its file
        before = acquired(read_directory(tmp_path, compact=False), "good")
        assert before == 5
        compact_directory(tmp_path, [(path, stale)])  # the reader goes on with its decision
        seen = [acquired(read_directory(tmp_path), "good")]
        link.write()
        seen.append(acquired(read_directory(tmp_path), "good"))
        with pool.connection():
            pass
        seen.append(acquired(link.read_all(), "good"))
    finally:
        pool.close()
    assert seen == [5, 5, 6], f"exported after compaction: {seen} (5 before)"


def test_compaction_never_writes_a_retired_file_that_readers_reject(dsn, tmp_path, caplog_all):
    """Many pool names over a fleet's life (a pool per tenant, say) all end up retired.

    The compacted file must stay within the bounds every reader checks (at most
    MAX_POOLS_PER_FILE pools): a retired file that fails them would be skipped, and
    every count of every dead worker would vanish from /metrics at once.
    """
    pool, link = write_good_state(dsn, tmp_path)
    pool.close()
    link.write()
    (template,) = decode(read_bounded(link.path)).pools
    link.path.unlink()
    names = MAX_POOLS_PER_FILE + 20
    for i in range(names):
        state = copy.deepcopy(template)
        state.pool = f"tenant-{i}"
        dead = StateFile(secrets.token_hex(16), 0, "", time.time(), exited=True, pools=[state])
        write_atomically(tmp_path, file_name(dead.incarnation), dead.encode())
    want = 3 * names
    seen = []
    for _ in range(3):
        seen.append(sum(acquired([s], s.pool) for s in read_directory(tmp_path)))
    assert seen == [want] * 3, f"exported {seen}, counted {want}"
    assert not [r for r in caplog_all.records if "skipping state file" in r.getMessage()]


@pytest.mark.parametrize(
    "name",
    [
        "orders\u00a0db",  # a no-break space, pasted from a document
        "team \U0001f468\u200d\U0001f469\u200d\U0001f467",  # an emoji joined by ZWJ
        "\u05d4\u05d6\u05de\u05e0\u05d5\u05ea\u200f",  # Hebrew text and its direction mark
    ],
)
def test_every_name_a_pool_accepts_is_read_back(dsn, tmp_path, name, caplog_all):
    """What a worker writes, readers accept: a pool name the pool takes must not get
    its process's whole state file rejected (all of its pools' counts would vanish)."""
    collector, link = linked(tmp_path)
    pools = [
        ConnectionPool(dsn, min_size=1, max_size=1, name=n, open=True) for n in (name, "plain")
    ]
    try:
        for pool in pools:
            collector.add(pool)
            for _ in range(4):
                with pool.connection():
                    pass
        states = link.read_all()
    finally:
        for pool in pools:
            pool.close()
    assert acquired(states, "plain") == 4
    assert acquired(states, name) == 4
    assert not [r for r in caplog_all.records if "skipping state file" in r.getMessage()]


def test_a_database_name_with_a_control_character_keeps_the_file_readable(pg, tmp_path):
    """The pool_info labels come from the server: a database named with a tab in it
    must not make readers refuse the state file of every pool of the process."""
    pg.execute('CREATE DATABASE "sales\tq1"')
    try:
        collector, link = linked(tmp_path)
        pool = ConnectionPool(
            pg.dsn(), kwargs={"dbname": "sales\tq1"}, min_size=1, name="tabbed", open=True
        )
        try:
            collector.add(pool)
            for _ in range(3):
                with pool.connection():
                    pass
            states = link.read_all()
        finally:
            pool.close()
    finally:
        pg.execute('DROP DATABASE "sales\tq1"')
    assert acquired(states, "tabbed") == 3
    (state,) = [s for s in states if s.pool == "tabbed"]
    assert state.info["dbname"] == "sales?q1"


def test_a_copy_of_a_state_file_is_not_counted_twice(dsn, tmp_path, caplog_all):
    """A file is one incarnation's, under that incarnation's name: a copy under another
    name (a backup, an operator's cp) is refused, not added a second time; and a file
    claiming another process's incarnation cannot get that process's file compacted."""
    pool, link = write_good_state(dsn, tmp_path)
    try:
        original = link.path.read_bytes()
        (tmp_path / "poolwatch-copy.json").write_bytes(original)
        exited = json.loads(original)
        exited["exited"] = True
        (tmp_path / "poolwatch-claim.json").write_text(json.dumps(exited))
        assert acquired(read_directory(tmp_path), "good") == 3
        assert link.path.exists()  # not compacted on the word of the planted "exited" copy
        link.write()
        assert acquired(read_directory(tmp_path), "good") == 3
    finally:
        pool.close()
    assert any("skipping state file" in r.getMessage() for r in caplog_all.records)
