"""Multiprocess mode: every worker writes its pools' state to a shared directory.

prometheus_client's multiprocess mode keeps per-metric mmap files and ignores
custom collectors, so a scrape that lands on one gunicorn worker would see only
that worker's pools. Instead each process incarnation writes one JSON file into
``PROMETHEUS_MULTIPROC_DIR`` (format: `multiprocess_files`): every
`WRITE_INTERVAL` seconds from a daemon thread, at scrape time, and at exit. A
scrape reads all files and merges them per pool name (`merge_states`).

What this guarantees:

- Identity. A file is named after a random incarnation id drawn when the link
  starts and drawn again in a forked child, never after the pid: a new process
  that gets a dead one's pid (routine in containers) writes a file of its own.
  Pools are told apart by a random token too, not by ``id()``, which a pool
  re-created under the same name may inherit.
- Counters and histograms never go backwards. A pool's counts stay counted after
  it closes, is garbage-collected, or its process exits; an open pool is held by
  the link until it has been written closed, so no count made before ``close()``
  is lost. A forked child never writes the pools it inherited: they are its
  parent's.
- Liveness without pids. Gauges come only from live incarnations: one whose file
  was written within `STALE_AFTER` seconds and that has not exited. This works
  from another PID namespace (a sidecar container); in the same namespace a
  process known to be gone is dropped at once.
- Bounded scrapes. The counts of incarnations that exited (or whose file is older
  than `COMPACT_AFTER`) are folded into one retired file, under a lock, and their
  files removed: a scrape reads one file per live process plus one.
- Validated input. A file that does not match the schema is skipped, counted and
  logged once (`multiprocess_files.REJECTIONS`).
"""

from __future__ import annotations

import atexit
import copy
import fcntl
import logging
import multiprocessing.util
import os
import secrets
import threading
import time
import weakref
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .multiprocess_files import (
    FILE_GLOB,
    MAX_FILE_BYTES,
    MAX_POOLS_PER_FILE,
    REJECTIONS,
    RETIRED_ID,
    RETIRED_NAME,
    RejectedFile,
    StateFile,
    decode,
    directory_warning,
    file_name,
    read_bounded,
    write_atomically,
)
from .names import BY_KEY
from .state import PoolState, Watchable, has_activity, merge_states, retired_merge, state_of

if TYPE_CHECKING:
    from .prometheus import PoolCollector

logger = logging.getLogger("poolwatch.metrics")

#: seconds between two writes of a process's state (its heartbeat)
WRITE_INTERVAL = 1.0
#: a process whose file is older than this is not live: its gauges are dropped
STALE_AFTER = 10.0
#: a process whose file is older than this is taken for dead and compacted
COMPACT_AFTER = 300.0
#: an absorbed incarnation is remembered this long after its compaction, so that a
#: scrape that read its file just before is not counted twice (seconds)
ABSORBED_KEEP = 120.0
LOCK_NAME = "poolwatch-retired.lock"
#: closed pools' names one process keeps counting (half of what a file may hold, so that
#: the names still open fit beside them)
MAX_RETIRED_NAMES = MAX_POOLS_PER_FILE // 2


def pid_namespace() -> str:
    """This process's PID namespace ("pid:[4026531836]"), or "" where /proc has none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """Whether no process *pid* exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


class MultiprocessLink:
    """Writes this process's pools for the others, and reads everyone's at scrape."""

    def __init__(self, directory: str, collector: PoolCollector) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(
                f"PROMETHEUS_MULTIPROC_DIR={directory!r} is not a directory; create it"
                " before the workers start (and empty it when the server starts)"
            )
        warning = directory_warning(self.directory)
        if warning:
            logger.warning("%s", warning)
        self.collector = collector
        self._atexit = False
        self._new_incarnation(inherited=())
        self._parents_pools: list[Watchable] = []
        me = weakref.ref(self)

        def before() -> None:
            link = me()
            if link is not None:
                link._before_fork()

        def in_parent() -> None:
            link = me()
            if link is not None:
                link._parents_pools = []
                link._lock.release()

        def in_child() -> None:
            link = me()
            if link is not None:
                was_writing = link._thread is not None
                adopted = [*link.collector.pools(), *link._held.values()]
                link._new_incarnation(inherited=link._parents_pools)
                link._parents_pools = []
                for pool in adopted:
                    link.track(pool)
                if was_writing:  # the child's heartbeat, or its gauges would go stale
                    link.start()

        os.register_at_fork(before=before, after_in_parent=in_parent, after_in_child=in_child)
        # A multiprocessing child (fork or forkserver start method; Celery's prefork
        # pool is the same) ends with os._exit: atexit never runs there, and whatever
        # it counted since the writer's last tick would be lost. Its own exit path runs
        # multiprocessing's finalizers: registered now if this link was made in such a
        # child, else in each child once it has cleared those inherited from the parent.
        if multiprocessing.parent_process() is not None:
            self._final_write_in_child()
        multiprocessing.util.register_after_fork(self, MultiprocessLink._final_write_in_child)

    def _final_write_in_child(self) -> None:
        multiprocessing.util.Finalize(None, self._write_at_exit, exitpriority=10)

    def _before_fork(self) -> None:
        """Note which pools are this process's before fork(): a child must not write them.

        A pool that is open or has counted anything belongs to the parent; one never
        opened (created at import under gunicorn --preload, say) the child may open
        and count as its own. Holding the lock over fork() also keeps the writer out
        of a pool's lock at that instant, so the child finds no lock held.
        """
        self._lock.acquire()
        pools = {id(p): p for p in [*self.collector.pools(), *self._held.values()]}
        try:
            self._parents_pools = [
                p
                for p in pools.values()
                if p in self._foreign or not p.closed or has_activity(state_of(p))
            ]
        except Exception:  # never block a fork: then all of them are the parent's
            logger.exception("could not read the pools before fork()")
            self._parents_pools = list(pools.values())

    def _new_incarnation(self, inherited: Any) -> None:
        """Start afresh (in a forked child): *inherited* pools are the parent's, not ours."""
        # New locks: one held by another thread at fork() would stay held in the child.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.incarnation = secrets.token_hex(16)
        self._pidns = pid_namespace()
        self._written = False
        self._foreign: weakref.WeakSet[Watchable] = weakref.WeakSet(inherited)
        self._tokens: weakref.WeakKeyDictionary[Watchable, str] = weakref.WeakKeyDictionary()
        # Open pools, held until they are written closed (their last counts are kept).
        self._held: dict[str, Watchable] = {}
        # Last state of each pool still referenced, by token.
        self._states: dict[str, PoolState] = {}
        # Merged counts of the pools gone, by name.
        self._retired: list[PoolState] = []
        self._warned_names = False
        # Counts published by a file that was compacted while we lived (see _rebase).
        self._baseline: list[PoolState] = []
        self._last_written: StateFile | None = None

    @property
    def path(self) -> Path:
        return self.directory / file_name(self.incarnation)

    def track(self, pool: Watchable) -> None:
        """Hold *pool* from registration on, so that counts made before a first write count.

        A pool is let go once it has been written closed after counting something.
        """
        with self._lock:
            if pool not in self._foreign:
                token = self._tokens.setdefault(pool, secrets.token_hex(8))
                self._held[token] = pool

    def start(self) -> None:
        """Start the writer thread (again, in a forked child)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="poolwatch-multiprocess-writer", daemon=True
            )
            self._thread.start()
            if not self._atexit:
                self._atexit = True
                atexit.register(self._write_at_exit)

    def _write_at_exit(self) -> None:
        try:
            self.write(exiting=True)
        except OSError as ex:  # the directory may be gone by now: nothing to keep
            logger.debug("could not write the final pool state: %s", ex)

    def _run(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL):
            try:
                self.write()
            except Exception:
                logger.exception("could not write the pool state to %s", self.directory)

    def _collect(self) -> None:
        """Bring `_states` up to date with the pools now; called with the lock held."""
        seen: set[str] = set()
        pools = {id(p): p for p in [*self.collector.pools(), *self._held.values()]}
        for pool in pools.values():
            if pool in self._foreign:
                continue
            token = self._tokens.setdefault(pool, secrets.token_hex(8))
            closed = pool.closed  # read first: a state taken after close() is final
            state = state_of(pool)
            state.live = not closed
            if closed and token not in self._states and not has_activity(state):
                continue  # never opened (yet): nothing to count
            seen.add(token)
            self._states[token] = state
            if closed:
                self._held.pop(token, None)  # its final counts are in _states now
            else:
                self._held[token] = pool
        gone = [token for token in self._states if token not in seen]
        if gone:
            dead = [self._states.pop(token) for token in gone]
            self._retired = retired_merge([*self._retired, *dead])
            self._bound_retired()

    def _bound_retired(self) -> None:
        """Forget the oldest closed pools' names past MAX_RETIRED_NAMES.

        A process that keeps making new names (unnamed pools are "pool-1", "pool-2"...)
        would otherwise grow its file past what readers accept, and then every count of
        the process would be refused at once. Forgotten names' series end, as a closed
        pool's do in a single process; the names still open are never touched.
        """
        excess = len(self._retired) - MAX_RETIRED_NAMES
        if excess <= 0:
            return
        if not self._warned_names:
            self._warned_names = True
            logger.warning(
                "more than %d closed pool names in this process: the oldest are forgotten"
                " and their series end; name your pools (a fixed set of names) to keep them",
                MAX_RETIRED_NAMES,
            )
        self._retired = self._retired[excess:]  # retired_merge keeps first-seen order

    def write(self, *, exiting: bool = False) -> None:
        """Write this process's state now, atomically (readers never see half a file)."""
        with self._lock:
            self._collect()
            if not (self._states or self._retired or self._written):
                return  # nothing of ours (a forked child that made no pool, say)
            if self._written and not self.path.exists():
                self._rebase()
            pools, retired = list(self._states.values()), self._retired
            if self._baseline:
                pools, retired = self._minus_baseline([*pools, *retired]), []
            content = StateFile(
                incarnation=self.incarnation,
                pid=os.getpid(),
                pidns=self._pidns,
                heartbeat=time.time(),
                exited=exiting,
                pools=pools,
                retired=retired,
            )
            write_atomically(self.directory, self.path.name, content.encode())
            self._written = True
            self._last_written = content
            if exiting:
                self._stop.set()

    def _rebase(self) -> None:
        """Our file was compacted while we lived (we were silent for COMPACT_AFTER).

        What it held is counted in the retired file now: carry on under a new
        incarnation that publishes only what came after, or it would count twice.
        """
        logger.warning(
            "%s was compacted while this process was alive (silent for over %gs);"
            " publishing only the counts made since",
            self.path,
            COMPACT_AFTER,
        )
        published = self._last_written
        if published is not None:
            self._baseline = retired_merge(
                [*self._baseline, *copy.deepcopy(published.pools + published.retired)]
            )
        self.incarnation = secrets.token_hex(16)
        self._written = False

    def _minus_baseline(self, states: list[PoolState]) -> list[PoolState]:
        """*states* merged per name, less the counts already in the retired file."""
        merged = merge_states(states)
        base = {s.pool: s for s in self._baseline}
        for state in merged:
            done = base.get(state.pool)
            if done is None:
                continue
            for key, value in done.scalars.items():
                if key in state.scalars and BY_KEY[key[0]].type == "counter":
                    state.scalars[key] = max(0.0, state.scalars[key] - value)
            for key, hist in done.histograms.items():
                have = state.histograms.get(key)
                if have is not None:
                    have.counts = [max(0, a - b) for a, b in zip(have.counts, hist.counts)]
                    have.sum = max(0.0, have.sum - hist.sum)
        return merged

    def read_all(self) -> list[PoolState]:
        self.write()
        return read_directory(self.directory)

    def stop(self) -> None:
        self._stop.set()


def _is_live(content: StateFile, now: float, pidns: str) -> bool:
    if content.exited or now - content.heartbeat > STALE_AFTER:
        return False
    return not (pidns and content.pidns == pidns and _gone(content.pid))


def _is_dead(content: StateFile, now: float, pidns: str) -> bool:
    """Dead for sure (its counts are final): exited, gone, or silent for COMPACT_AFTER."""
    if content.exited or now - content.heartbeat > COMPACT_AFTER:
        return True
    return bool(pidns) and content.pidns == pidns and _gone(content.pid)


def _read(path: Path) -> StateFile | None:
    try:
        return decode(read_bounded(path))
    except FileNotFoundError:
        return None  # compacted or replaced meanwhile
    except RejectedFile as ex:
        REJECTIONS.record(path, str(ex))
    except OSError as ex:
        REJECTIONS.record(path, f"unreadable: {ex.strerror}")
    return None


def read_directory(directory: str | os.PathLike[str], *, compact: bool = True) -> list[PoolState]:
    """Every process's pool states found in *directory*, merged per pool name.

    The retired file is read last: a compaction that runs meanwhile lists the files
    it absorbed there, and those are then skipped, so that no count is read twice
    or missed.
    """
    root = Path(directory)
    now, pidns = time.time(), pid_namespace()
    workers: list[tuple[Path, StateFile]] = []
    for path in sorted(root.glob(FILE_GLOB)):
        if path.name == RETIRED_NAME:
            continue
        content = _read(path)
        if content is None:
            continue
        if path.name != file_name(content.incarnation):
            # A copy (a backup, a cp) would be counted twice, and a planted one that
            # claims another incarnation exited would get that live file compacted.
            REJECTIONS.record(path, f"not named after its incarnation {content.incarnation}")
            continue
        workers.append((path, content))
    retired = _read(root / RETIRED_NAME)
    absorbed = retired.absorbed if retired else {}
    states: list[PoolState] = list(retired.retired) if retired else []
    dead: list[tuple[Path, StateFile]] = []
    for path, content in workers:
        if content.incarnation in absorbed:
            continue
        live = _is_live(content, now, pidns)
        for state in content.pools:
            state.live = state.live and live
            states.append(state)
        states.extend(content.retired)
        if _is_dead(content, now, pidns):
            dead.append((path, content))
    expired = any(now - t > ABSORBED_KEEP for t in absorbed.values()) if retired else False
    if compact and (dead or expired):
        try:
            compact_directory(root, dead)
        except OSError as ex:  # read-only for this process, say: the next reader will
            logger.debug("could not compact %s: %s", root, ex)
    return merge_states(states)


def compact_directory(root: Path, dead: list[tuple[Path, StateFile]]) -> None:
    """Fold *dead* incarnations' counts into the retired file and remove their files.

    Runs under an exclusive lock on LOCK_NAME; a reader that finds it taken leaves
    the work to the one holding it. The retired file is replaced before the dead
    files are removed and lists them as absorbed, so a crash in between double
    counts nothing: the next compaction removes what it lists.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root / LOCK_NAME, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        retired_path = root / RETIRED_NAME
        if retired_path.exists() or retired_path.is_symlink():
            current = _read(retired_path)
            if current is None:
                logger.warning("not compacting %s: its retired file is unreadable", root)
                return
        else:
            current = StateFile(RETIRED_ID, 0, "", 0.0, exited=True)
        # Files absorbed before are counted already: remove any still there, and
        # forget them once no scrape can still hold a copy read before they were.
        now = time.time()
        absorbed = dict(current.absorbed)
        for incarnation, when in current.absorbed.items():
            with suppress(FileNotFoundError):
                (root / file_name(incarnation)).unlink()
            if now - when > ABSORBED_KEEP:
                del absorbed[incarnation]
        # Read each file again under the lock: a process taken for dead from an older
        # copy (paused past COMPACT_AFTER) may have written since. Folding in the old
        # copy and removing the newer file would lose what came in between.
        fresh = [
            (path, content)
            for path, content in dead
            if content.incarnation not in absorbed and _unchanged(path, content)
        ]
        if not fresh and absorbed == current.absorbed:
            return
        pruned = dict(absorbed)
        states = list(current.retired)
        for _, content in fresh:
            states.extend(content.pools)
            states.extend(content.retired)
            absorbed[content.incarnation] = now
        update = StateFile(
            RETIRED_ID, 0, "", now, exited=True, retired=retired_merge(states), absorbed=absorbed
        )
        if not _within_bounds(update):
            # Every reader would reject the file, and with it every count of every dead
            # process. Leave the dead files as they are: scrapes read more, counts stay.
            _warn_once(
                root,
                f"not compacting the state files in {root}: the retired file would exceed"
                f" {MAX_POOLS_PER_FILE} pool names or {MAX_FILE_BYTES} bytes",
            )
            if pruned == current.absorbed:
                return
            fresh = []
            update = StateFile(
                RETIRED_ID, 0, "", now, exited=True, retired=current.retired, absorbed=pruned
            )
        write_atomically(root, RETIRED_NAME, update.encode())
        for path, _ in fresh:
            with suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)


def _within_bounds(content: StateFile) -> bool:
    """Whether readers will accept *content* (what `multiprocess_files.decode` checks)."""
    if max(len(content.pools), len(content.retired)) > MAX_POOLS_PER_FILE:
        return False
    return len(content.encode()) <= MAX_FILE_BYTES


_warned: set[str] = set()


def _warn_once(root: Path, message: str) -> None:
    if str(root) not in _warned:
        _warned.add(str(root))
        logger.warning("%s", message)


def _unchanged(path: Path, content: StateFile) -> bool:
    """Whether *path* still holds the write that *content* was read from."""
    now = _read(path)
    return (
        now is not None
        and now.incarnation == content.incarnation
        and now.heartbeat == content.heartbeat
        and now.exited == content.exited
    )


def readiness(states: list[PoolState], ready_max_wait: float | None) -> tuple[bool, dict[str, Any]]:
    """Readiness from merged states (`poolwatch serve`): what /readyz answers.

    Not ready when no process has written a live state within STALE_AFTER seconds,
    or when a pool has no connection and its last connect failed, or (only if
    *ready_max_wait* is given: starvation readiness is opt-in) has had a request
    waiting for *ready_max_wait* seconds or more.
    """
    pools: dict[str, Any] = {}
    for state in states:
        if not state.live:
            continue
        s = state.scalars
        reason = None
        waiting = s.get(("pending_requests", ()), 0)
        oldest = s.get(("oldest_wait", ()), 0)
        connections = s.get(("connections", ("idle",)), 0) + s.get(("connections", ("used",)), 0)
        if connections == 0 and state.connect_failing is not None:
            reason = f"cannot connect to the server (SQLSTATE class {state.connect_failing})"
        elif ready_max_wait is not None and waiting and oldest >= ready_max_wait:
            most = s.get(("connections_max", ()), 0)
            reason = (
                f"exhausted: {waiting:g} requests waiting, the oldest for {oldest:.1f}s,"
                f" all {most:g} connections in use"
            )
        pools[state.pool] = {"ready": reason is None, "reason": reason}
    if not pools:
        return False, {
            "status": "unavailable",
            "reason": f"no process has written a live pool state in the last {STALE_AFTER:g}s",
            "pools": {},
        }
    ready = all(p["ready"] for p in pools.values())
    return ready, {"status": "ready" if ready else "unavailable", "pools": pools}
