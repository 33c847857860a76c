"""benchmarks.slices: who runs when, and what a round adds up (counts, not timings)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from benchmarks.harness import DURATION, WORK, SyncOp
from benchmarks.slices import SlicedWorkers

NAMES = ("a", "b", "c")


def _recording(
    log: list[tuple[str, int]], lock: threading.Lock
) -> dict[str, Callable[[int], SyncOp]]:
    """Operations that write down which library ran on which thread, in call order."""

    def maker(name: str) -> Callable[[int], SyncOp]:
        def make(i: int) -> SyncOp:
            def op() -> float:
                with lock:
                    log.append((name, i))
                return 0.001

            return op

        return make

    return {name: maker(name) for name in NAMES}


def _runs(log: list[tuple[str, int]]) -> list[str]:
    """The libraries in the order their slices ran (consecutive calls of one merged)."""
    order: list[str] = []
    for name, _ in log:
        if not order or order[-1] != name:
            order.append(name)
    return order


def test_fixed_work_runs_every_quota_on_every_thread_in_rotating_slices() -> None:
    log: list[tuple[str, int]] = []
    workers = SlicedWorkers(3, _recording(log, threading.Lock()))
    try:
        out = workers.round(1, seconds=0.005, slices=2, quota=4)
        work_log = log[len(log) - 3 * 3 * 2 * 4 :]  # the fixed-work half came second
        # Slice s of round 1 starts at library (1 + s) % 3; one slice never mixes libraries.
        assert _runs(work_log) == ["b", "c", "a", "c", "a", "b"]
        for name in NAMES:
            m = out[name][WORK]
            assert m.per_worker == [8, 8, 8]  # 2 slices x quota 4, on each of the 3 threads
            assert len(m.samples) == 24
            assert sorted(i for n, i in work_log if n == name) == [0] * 8 + [1] * 8 + [2] * 8
            assert m.qps == pytest.approx(24 / m.seconds)
            assert 0.0 < m.slowest_share <= 1.0
    finally:
        workers.close()


def test_fixed_duration_counts_what_each_thread_did() -> None:
    log: list[tuple[str, int]] = []
    workers = SlicedWorkers(2, _recording(log, threading.Lock()))
    try:
        out = workers.round(0, seconds=0.005, slices=3, quota=1)
        duration_log = log[: len(log) - 2 * 3 * 3]
        assert _runs(duration_log) == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
        for name in NAMES:
            m = out[name][DURATION]
            for i in range(2):
                assert m.per_worker[i] == sum(1 for n, t in duration_log if (n, t) == (name, i))
            assert len(m.samples) == sum(m.per_worker)
            assert m.slowest_share == min(m.per_worker) / (sum(m.per_worker) / 2)
    finally:
        workers.close()


def test_a_failing_operation_fails_the_round_instead_of_hanging() -> None:
    def broken(i: int) -> SyncOp:
        def op() -> float:
            raise RuntimeError("the server went away")

        return op

    def fine(i: int) -> SyncOp:
        return lambda: 0.0

    workers = SlicedWorkers(2, {"fine": fine, "broken": broken})
    with pytest.raises(RuntimeError, match="the server went away"):
        workers.round(0, seconds=0.005, slices=1, quota=3)
    workers.close()
    assert not any(t.is_alive() for t in workers._threads)
