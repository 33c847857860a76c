"""One round of the vs-raw rows: every library in turn, in short slices, on the same threads.

A 0.3 s run of one library, then 0.3 s of the next, lets the shared machine's load
change between the two: one round's ratio to raw connections moved from 0.6 to 1.4.
Here a round instead cuts each library's share into slices of a few tens of ms and
runs them in turn (A B C D, B C D A, ...), so every library meets the same load,
second by second, and the ratio within a round keeps only what the library changes.

The same n threads run every slice of the round (started once, not per run), each
holding one operation per library (`make_op(i)` as in `harness`); a slice starts
them on one library together and ends when they have all stopped. Both measures:

- fixed duration: every thread runs its operation until the slice's deadline;
- fixed work: every thread runs it *quota* times; the slice lasts until the last one
  finished.

A library's `Measure` for the round adds up its slices: its queries over the sum of
its slices' times, the slowest worker's share over the whole round, every sample,
and this process's CPU and context switches during its slices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .harness import DURATION, WORK, Measure, SyncOp, Usage

#: seconds any one slice may take before the round is declared stuck
STUCK = 120.0


class _Tally:
    """What one library's slices of one measure added up to."""

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.finishes = [0.0] * n  # fixed work: each worker's time to finish, summed
        self.seconds = 0.0
        self.cpu = 0.0
        self.switches = 0
        self.samples: list[float] = []

    def measure(self, measure: str) -> Measure:
        total = sum(self.counts)
        if measure == DURATION:
            share = min(self.counts) / (total / len(self.counts))
        else:
            share = (sum(self.finishes) / len(self.finishes)) / self.seconds
        m = Measure(total / self.seconds, share, self.seconds, self.counts, self.samples)
        m.cpu_us_per_op = self.cpu / total * 1e6
        m.switches_per_op = self.switches / total
        return m


class SlicedWorkers:
    """n threads that run, slice by slice, whichever library they are told to."""

    def __init__(self, n: int, makers: dict[str, Callable[[int], SyncOp]]) -> None:
        self.n = n
        self.names = list(makers)
        self._ops = [{name: make(i) for name, make in makers.items()} for i in range(n)]
        self._go = threading.Barrier(n + 1, timeout=STUCK)
        self._done = threading.Barrier(n + 1, timeout=STUCK)
        self._name: str | None = None
        self._start = 0.0
        self._deadline = 0.0
        self._quota = 0  # 0: run until the deadline (fixed duration)
        self._counts = [0] * n
        self._finishes = [0.0] * n
        self._samples: list[list[float]] = [[] for _ in range(n)]
        self._error: BaseException | None = None  # the first a worker's operation raised
        self._threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def _work(self, i: int) -> None:
        try:
            self._serve(i)
        except threading.BrokenBarrierError:
            return  # another worker failed, or the round was given up: nothing to add
        except BaseException as exc:
            # A failed query must fail the round now, not after the barriers time out:
            # break them, and leave the error for the round to raise.
            self._error = self._error or exc
            self._go.abort()
            self._done.abort()

    def _serve(self, i: int) -> None:
        clock = time.perf_counter
        while True:
            self._go.wait()
            name = self._name
            if name is None:
                return
            op, out = self._ops[i][name], self._samples[i]
            append, quota = out.append, self._quota
            if quota:
                for _ in range(quota):
                    append(op())
                self._counts[i] = quota
            else:
                stop, done = self._deadline, 0
                while clock() < stop:
                    append(op())
                    done += 1
                self._counts[i] = done
            self._finishes[i] = clock() - self._start
            self._done.wait()

    def _slice(self, name: str, seconds: float, quota: int, tally: _Tally) -> None:
        for s in self._samples:
            s.clear()
        self._name, self._quota = name, quota
        usage = Usage()
        self._start = time.perf_counter()
        self._deadline = self._start + seconds
        try:
            self._go.wait()
            self._done.wait()
        except threading.BrokenBarrierError:
            if self._error is not None:
                raise self._error from None
            raise
        # Fixed work ends with the last worker; fixed duration with the slice's deadline
        # or the last query begun before it, whichever is later.
        tally.seconds += max(self._finishes)
        tally.cpu += usage.cpu
        tally.switches += usage.switches
        for i in range(self.n):
            tally.counts[i] += self._counts[i]
            tally.finishes[i] += self._finishes[i]
            tally.samples.extend(self._samples[i])

    def round(
        self, index: int, seconds: float, slices: int, quota: int
    ) -> dict[str, dict[str, Measure]]:
        """Round *index*: each library *slices* times per measure, *seconds* each (fixed
        duration) or *quota* operations per thread each (fixed work), order rotating."""
        out: dict[str, dict[str, Measure]] = {}
        k = len(self.names)
        for measure in (DURATION, WORK):
            tallies = {name: _Tally(self.n) for name in self.names}
            for s in range(slices):
                first = (index + s) % k
                for name in self.names[first:] + self.names[:first]:
                    self._slice(name, seconds, quota if measure == WORK else 0, tallies[name])
            for name, tally in tallies.items():
                out.setdefault(name, {})[measure] = tally.measure(measure)
        return out

    def close(self) -> None:
        self._name = None
        if not self._go.broken:
            self._go.wait()
        for t in self._threads:
            t.join(timeout=STUCK)
