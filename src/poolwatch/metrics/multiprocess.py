"""Multiprocess mode: every worker writes its pools' state to a shared directory.

prometheus_client's multiprocess mode keeps per-metric mmap files and ignores
custom collectors, so a scrape that lands on one gunicorn worker would see only
that worker's pools. Instead each process writes one JSON file,
``poolwatch-<pid>.json``, into ``PROMETHEUS_MULTIPROC_DIR``: every second from a
daemon thread, at scrape time, and at exit. A scrape reads all files and merges
them per pool name (`merge_states`):

- counters and histograms add up, and stay counted after a process exits or a
  pool closes, so that they never go backwards;
- gauges come only from processes still alive.

The same directory can be served by `poolwatch serve --multiproc-dir` from a
process that owns no pool at all.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .state import PoolState, merge_states, state_of

if TYPE_CHECKING:
    from .prometheus import PoolCollector

logger = logging.getLogger("poolwatch.metrics")

FILE_PREFIX = "poolwatch-"
#: seconds between two writes of a process's state
WRITE_INTERVAL = 1.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def read_directory(directory: str | os.PathLike[str]) -> list[PoolState]:
    """Every process's pool states found in *directory*, merged per pool name."""
    states: list[PoolState] = []
    for path in sorted(Path(directory).glob(FILE_PREFIX + "*.json")):
        try:
            data = json.loads(path.read_text())
            alive = _alive(int(data["pid"]))
            for item in data["pools"]:
                states.append(PoolState.from_json(item, live=alive))
            for item in data.get("retired", ()):
                states.append(PoolState.from_json(item, live=False))
        except (OSError, ValueError, KeyError, TypeError) as ex:
            # A file from another version, or one being replaced: skip it this time.
            logger.debug("skipping %s: %s", path, ex)
    return merge_states(states)


class MultiprocessLink:
    """Writes this process's pools for the others, and reads everyone's at scrape."""

    def __init__(self, directory: str, collector: PoolCollector) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(
                f"PROMETHEUS_MULTIPROC_DIR={directory!r} is not a directory; create it"
                " before the workers start (and empty it when the server starts)"
            )
        self.collector = collector
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stop = threading.Event()
        # Last state seen of each pool, by id, to keep a closed pool's counters.
        self._last: dict[int, PoolState] = {}
        self._retired: list[PoolState] = []

    @property
    def path(self) -> Path:
        return self.directory / f"{FILE_PREFIX}{os.getpid()}.json"

    def start(self) -> None:
        """Start the writer thread (again, in a forked child)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's pools are not ours
                self._pid = os.getpid()
                self._thread = None
                self._last.clear()
                self._retired.clear()
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="poolwatch-multiprocess-writer", daemon=True
            )
            self._thread.start()
            atexit.register(self._write_at_exit)

    def _write_at_exit(self) -> None:
        if self._stop.is_set():
            return
        try:
            self.write()
        except OSError as ex:  # the directory may be gone by now: nothing to keep
            logger.debug("could not write the final pool state: %s", ex)

    def _run(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL):
            try:
                self.write()
            except Exception:
                logger.exception("could not write the pool state to %s", self.directory)

    def write(self) -> None:
        """Write this process's state now, atomically (readers never see half a file)."""
        with self._lock:
            pools = self.collector.pools()
            current: dict[int, PoolState] = {}
            for pool in pools:
                if not pool.closed:
                    current[id(pool)] = state_of(pool)
            for key, state in self._last.items():
                if key not in current:
                    self._retired.append(state)
            self._last = current
            self._retired = merge_states_keep_dead(self._retired)
            data = {
                "pid": os.getpid(),
                "pools": [s.to_json() for s in current.values()],
                "retired": [s.to_json() for s in self._retired],
            }
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.path)

    def read_all(self) -> list[PoolState]:
        self.write()
        return read_directory(self.directory)

    def stop(self) -> None:
        self._stop.set()


def merge_states_keep_dead(states: list[PoolState]) -> list[PoolState]:
    """Merge retired states so the file does not grow with every pool ever closed."""
    for s in states:
        s.live = False
    merged = merge_states(states)
    for s in merged:
        s.live = False
    return merged
