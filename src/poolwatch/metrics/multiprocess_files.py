"""The state files of multiprocess mode: their schema, and reading and writing them safely.

Anything may sit in a shared directory: files from another version, a crash's
leftovers, or files planted by someone else. So a file is read with bounds (no
symlink followed, no FIFO opened, a size limit), parsed without accepting
``NaN``, ``Infinity`` or numbers longer than any count, and checked against the
schema below before a single value of it is merged. A file that fails is
skipped whole: counted once in `REJECTIONS` (the
``poolwatch_exporter_state_files_rejected_total`` counter) and logged once.

A file holds one process incarnation's pools::

    {"version": 2, "incarnation": "<32 hex>", "pid": 123, "pidns": "pid:[4026531836]",
     "heartbeat": 1700000000.0, "exited": false,
          "pools": [<state>, ...], "retired": [<state>, ...], "absorbed": []}

``pools`` are the pools the process holds (``live`` false once a pool closed),
``retired`` the merged counts of pools it no longer holds. The compacted file of
dead processes (`RETIRED_NAME`) has the same shape, its ``absorbed`` listing the
incarnations already counted in it (``[id, unix time]`` pairs).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .names import BY_KEY, INFO_LABELS
from .state import MAX_LABEL_LENGTH, HistogramValue, PoolState

logger = logging.getLogger("poolwatch.metrics")

FILE_PREFIX = "poolwatch-"
FILE_GLOB = FILE_PREFIX + "*.json"
#: The one file the counts of dead processes are compacted into.
RETIRED_NAME = FILE_PREFIX + "retired.json"
RETIRED_ID = "retired"
SCHEMA_VERSION = 2

#: Bounds on what one file may hold; a file beyond any of them is rejected.
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_POOLS_PER_FILE = 2000
MAX_SERIES_PER_POOL = 200
MAX_ABSORBED = 100_000
#: Longer digit strings cannot be a count (2**64 has 20 digits).
MAX_DIGITS = 20
MAX_COUNT = 2**63

_INCARNATION = re.compile(r"[0-9a-f]{32}")


class RejectedFile(ValueError):
    """A state file that does not match the schema; the message says why."""


@dataclass
class StateFile:
    incarnation: str
    pid: int
    pidns: str
    heartbeat: float
    exited: bool = False
    pools: list[PoolState] = field(default_factory=list)
    retired: list[PoolState] = field(default_factory=list)
    #: incarnation -> when it was compacted (retired file only)
    absorbed: dict[str, float] = field(default_factory=dict)

    def encode(self) -> bytes:
        data = {
            "version": SCHEMA_VERSION,
            "incarnation": self.incarnation,
            "pid": self.pid,
            "pidns": self.pidns,
            "heartbeat": self.heartbeat,
            "exited": self.exited,
            "pools": [s.to_json() for s in self.pools],
            "retired": [s.to_json() for s in self.retired],
            "absorbed": [[k, t] for k, t in self.absorbed.items()],
        }
        # allow_nan=False: a non-finite value is a bug here, and would be rejected there.
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def file_name(incarnation: str) -> str:
    return f"{FILE_PREFIX}{incarnation}.json"


# --- parsing and validation -------------------------------------------------


def _no_constant(name: str) -> Any:
    raise RejectedFile(f"non-finite number {name}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise RejectedFile(f"a {len(text)}-digit number")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RejectedFile(f"non-finite number {text[:30]}")
    return value


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise RejectedFile(why)


def _text(value: object, what: str, limit: int = MAX_LABEL_LENGTH) -> str:
    _require(isinstance(value, str) and len(value) <= limit, f"{what} is not a short string")
    assert isinstance(value, str)
    # A lone surrogate (a JSON escape no pool writes) cannot be encoded in any response,
    # and control characters break log lines. The same test as for pool names
    # (`pool.base.check_name`), no stricter: a no-break space, a zero-width joiner or a
    # direction mark is a valid name, and a file holding one must not be refused whole.
    _require(
        _encodable(value) and not any(unicodedata.category(c) == "Cc" for c in value),
        f"{what} holds a control character or is not UTF-8",
    )
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedFile(f"{what} is not a number")
    _require(math.isfinite(value) and 0 <= value < MAX_COUNT, f"{what} is not a count")
    return value


def _labels(key: str, values: object) -> tuple[str, ...]:
    metric = BY_KEY[key]
    _require(
        isinstance(values, list) and len(values) == len(metric.labels),
        f"{key}: wrong label count",
    )
    assert isinstance(values, list)
    out = []
    for value, allowed in zip(values, metric.labels.values()):
        text = _text(value, f"{key} label")
        _require(not allowed or text in allowed, f"{key}: label value {text[:40]!r}")
        out.append(text)
    return tuple(out)


def _state(data: object, *, live: bool) -> PoolState:
    _require(isinstance(data, dict), "a pool entry is not an object")
    assert isinstance(data, dict)
    name = _text(data.get("pool"), "pool name")
    _require(bool(name), "empty pool name")
    info = data.get("info")
    _require(isinstance(info, dict) and set(info) <= set(INFO_LABELS), "bad info labels")
    assert isinstance(info, dict)
    state = PoolState(pool=name, info={k: _text(v, f"info {k}") for k, v in info.items()})
    state.live = live and data.get("live", True) is True
    failing = data.get("connect_failing")
    state.connect_failing = None if failing is None else _text(failing, "connect_failing", 32)

    scalars, histograms = data.get("scalars"), data.get("histograms")
    _require(isinstance(scalars, list) and len(scalars) <= MAX_SERIES_PER_POOL, "bad scalars")
    _require(isinstance(histograms, list) and len(histograms) <= MAX_SERIES_PER_POOL, "bad hists")
    assert isinstance(scalars, list) and isinstance(histograms, list)
    for row in scalars:
        _require(isinstance(row, list) and len(row) == 3, "bad scalar row")
        key, values, value = row
        metric = BY_KEY.get(key) if isinstance(key, str) else None
        _require(metric is not None and metric.type in ("gauge", "counter"), "unknown series")
        series = (key, _labels(key, values))
        _require(series not in state.scalars, f"duplicate series {key}")
        state.scalars[series] = _number(value, key)
    for row in histograms:
        _require(isinstance(row, list) and len(row) == 4, "bad histogram row")
        key, values, counts, total = row
        metric = BY_KEY.get(key) if isinstance(key, str) else None
        _require(metric is not None and metric.type == "histogram", "unknown histogram")
        assert metric is not None
        series = (key, _labels(key, values))
        _require(series not in state.histograms, f"duplicate histogram {key}")
        _require(
            isinstance(counts, list) and len(counts) == len(metric.buckets) + 1,
            f"{key}: wrong bucket count",
        )
        ints = [int(_number(n, key)) for n in counts]
        _require(all(isinstance(n, int) for n in counts), f"{key}: fractional count")
        state.histograms[series] = HistogramValue(ints, _number(total, key))
    return state


def decode(raw: bytes) -> StateFile:
    """The validated content of one file; RejectedFile says what is wrong otherwise."""
    _require(len(raw) <= MAX_FILE_BYTES, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(
            raw,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise RejectedFile("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as ex:
        if isinstance(ex, RejectedFile):
            raise
        raise RejectedFile(f"not JSON: {str(ex)[:80]}") from None
    _require(isinstance(data, dict), "not a JSON object")
    _require(data.get("version") == SCHEMA_VERSION, "another schema version")
    incarnation = _text(data.get("incarnation"), "incarnation", 32)
    _require(
        incarnation == RETIRED_ID or _INCARNATION.fullmatch(incarnation) is not None,
        "bad incarnation",
    )
    pid = data.get("pid")
    _require(isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid < 2**32, "bad pid")
    heartbeat = data.get("heartbeat")
    _require(isinstance(heartbeat, int | float) and not isinstance(heartbeat, bool), "heartbeat")
    exited = data.get("exited")
    _require(isinstance(exited, bool), "bad exited flag")
    pools, retired, absorbed = data.get("pools"), data.get("retired"), data.get("absorbed")
    for part in (pools, retired):
        _require(isinstance(part, list) and len(part) <= MAX_POOLS_PER_FILE, "bad pool list")
    _require(isinstance(absorbed, list) and len(absorbed) <= MAX_ABSORBED, "bad absorbed list")
    assert isinstance(pools, list) and isinstance(retired, list) and isinstance(absorbed, list)
    compacted: dict[str, float] = {}
    for item in absorbed:
        _require(isinstance(item, list) and len(item) == 2, "bad absorbed entry")
        key, when = item
        ok = isinstance(key, str) and _INCARNATION.fullmatch(key) is not None
        _require(ok and isinstance(when, int | float) and not isinstance(when, bool), "absorbed")
        compacted[key] = float(when)
    return StateFile(
        incarnation=incarnation,
        pid=pid,
        pidns=_text(data.get("pidns"), "pidns", 64),
        heartbeat=float(heartbeat),
        exited=exited,
        pools=[_state(item, live=not exited) for item in pools],
        retired=[_state(item, live=False) for item in retired],
        absorbed=compacted,
    )


# --- reading and writing ----------------------------------------------------


def read_bounded(path: Path) -> bytes:
    """The bytes of a regular file, not through a symlink, blocking on nothing.

    Raises RejectedFile for a symlink, a FIFO or device, or an oversized file, and
    FileNotFoundError for a file that went away (compacted meanwhile: not an error).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as ex:
        if ex.errno == errno.ELOOP:
            raise RejectedFile("a symlink") from None
        raise
    try:
        info = os.fstat(fd)
        _require(stat.S_ISREG(info.st_mode), "not a regular file")
        _require(info.st_size <= MAX_FILE_BYTES, f"larger than {MAX_FILE_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)


def write_atomically(directory: Path, name: str, data: bytes) -> None:
    """Replace *directory*/*name* with *data*: readers see the old file or the new one.

    The temporary file is created by mkstemp (O_EXCL, a random name: nothing planted
    can be written through), and rename() replaces a symlink at *name* itself rather
    than the file it points to.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".poolwatch-", suffix=".tmp")
    try:
        # Readable by a sidecar running as another user; no secret is in these files.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, directory / name)
    except BaseException:
        os.unlink(tmp)
        raise


def directory_warning(directory: Path) -> str | None:
    """Why *directory* is unsafe to merge from, or None."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return None
    if mode & stat.S_IWOTH:
        return (
            f"{directory} is world-writable: any local user can plant state files that"
            " the exporter merges into /metrics; give it mode 0700 or 0750"
        )
    return None


class Rejections:
    """Counts rejected files: each version of a bad file once, however often it is read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, int, int, int]] = set()
        self.total = 0

    def record(self, path: Path, why: str) -> None:
        try:
            info = os.lstat(path)
            version = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:
            version = (str(path), 0, 0, 0)
        with self._lock:
            if version in self._seen:
                return
            if len(self._seen) > 100_000:  # bounded memory under a flood of bad files
                self._seen.clear()
            self._seen.add(version)
            self.total += 1
        logger.warning("skipping state file %s: %s", path, why)


#: Every rejection in this process (rendered as poolwatch_exporter_state_files_rejected_total).
REJECTIONS = Rejections()
