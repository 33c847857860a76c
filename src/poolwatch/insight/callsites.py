"""Who holds the pool: naming the code that took a checkout, and a bounded table per pool.

The pool calls a `SiteFinder` in the borrower's own thread or task, once per checkout,
only while attribution is on (`BasePool.track_call_sites`). The finder walks the
stack outwards to the first frame that is neither the pool's machinery nor known
framework plumbing: the code a user would go and change. Decisions and names are
cached per code object, so a checkout costs a short walk and two dict look-ups.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import CodeType
from typing import Final

#: Modules whose frames are plumbing, not the borrower: the pool itself, this package,
#: the integrations that borrow on the application's behalf, and the libraries a
#: borrow passes through. A module matches its own name and every submodule.
DEFAULT_SKIP: Final = (
    "poolwatch.pool",
    "poolwatch._acompat",
    "poolwatch.integrations",
    "poolwatch.insight",
    "psycopg",
    "psycopg_pool",
    "contextlib",
    "asyncio",
    "threading",
    "concurrent.futures",
    "sqlalchemy",
    "django.db",
)
#: Sites kept per pool by default, and the most a pool may ever keep or export.
DEFAULT_TOP: Final = 20
MAX_TOP: Final = 100
#: Where the checkouts of sites pushed out of a full table are added up.
OTHER: Final = "(other)"
UNKNOWN: Final = "(unknown)"
# The walk gives up after this many frames (deep recursion inside plumbing).
_MAX_DEPTH = 64
# Caches are cleared when they grow past this: code generated at run time (templates,
# eval) could otherwise make them grow for ever.
_MAX_CACHED = 20_000


def _module_matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def describe(filename: str, lineno: int, function: str) -> str:
    """``"app/views.py:42 in list_orders"``: the file's last two path parts, line, function.

    Two parts tell apart the many ``views.py`` of a project without exposing where it is
    installed.
    """
    parts = os.path.normpath(filename).split(os.sep)
    return f"{'/'.join(parts[-2:])}:{lineno} in {function}"


class SiteFinder:
    """Names the caller of a checkout. Call it from inside the checkout (the pool does).

    *skip* lists extra module names whose frames are plumbing (a company's own
    database helpers, say), added to `DEFAULT_SKIP`.
    """

    def __init__(self, skip: Iterable[str] = ()) -> None:
        extra = tuple(skip)
        for name in extra:
            if not isinstance(name, str) or not name:
                raise ValueError(f"skip must hold module names, got {name!r}")
        self.skip: tuple[str, ...] = DEFAULT_SKIP + extra
        self._plumbing: dict[CodeType, bool] = {}
        self._names: dict[tuple[CodeType, int], str] = {}

    def __call__(self) -> str:
        frame = sys._getframe(1)
        plumbing = self._plumbing
        for _ in range(_MAX_DEPTH):
            code = frame.f_code
            skip = plumbing.get(code)
            if skip is None:
                if len(plumbing) > _MAX_CACHED:
                    plumbing.clear()
                module = frame.f_globals.get("__name__")
                skip = plumbing[code] = _module_matches(
                    module if isinstance(module, str) else "", self.skip
                )
            if not skip:
                key = (code, frame.f_lineno)
                name = self._names.get(key)
                if name is None:
                    if len(self._names) > _MAX_CACHED:
                        self._names.clear()
                    name = self._names[key] = describe(code.co_filename, key[1], code.co_name)
                return name
            back = frame.f_back
            if back is None:
                break
            frame = back
        return UNKNOWN


@dataclass
class SiteRow:
    """What one call site's checkouts added up to (seconds are sampled, see activity)."""

    site: str
    #: checkouts seen (those that lived at least until one sample)
    count: int = 0
    hold_seconds: float = 0.0
    idle_in_transaction_seconds: float = 0.0
    #: requests that had to queue while a checkout from this site was held
    waits_caused: int = 0

    def view(self) -> dict[str, object]:
        return {
            "site": self.site,
            "count": self.count,
            "hold_seconds": round(self.hold_seconds, 6),
            "idle_in_transaction_seconds": round(self.idle_in_transaction_seconds, 6),
            "waits_caused": self.waits_caused,
        }


class SiteTable:
    """At most *top* call sites per pool, plus `OTHER` for those pushed out.

    When a new site arrives at a full table, the site with the least hold time makes
    room and its totals join `OTHER`: the table's sums never shrink, and the memory
    it takes is bounded whatever the program does.
    """

    def __init__(self, top: int = DEFAULT_TOP) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            raise ValueError(f"top must be an integer from 1 to {MAX_TOP}, got {top!r}")
        self.top = top
        self._rows: dict[str, SiteRow] = {}
        self._other = SiteRow(OTHER)
        self._lock = threading.Lock()

    def row(self, site: str) -> SiteRow:
        """The row of *site*, made room for if new. Call with `lock` held."""
        row = self._rows.get(site)
        if row is None:
            if len(self._rows) >= self.top:
                smallest = min(self._rows.values(), key=lambda r: r.hold_seconds)
                del self._rows[smallest.site]
                other = self._other
                other.count += smallest.count
                other.hold_seconds += smallest.hold_seconds
                other.idle_in_transaction_seconds += smallest.idle_in_transaction_seconds
                other.waits_caused += smallest.waits_caused
            row = self._rows[site] = SiteRow(site)
        return row

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def rows(self) -> list[SiteRow]:
        """Copies of the rows, most hold time first; `OTHER` last if it holds anything."""
        with self._lock:
            out = [SiteRow(**vars(r)) for r in self._rows.values()]
            other = SiteRow(**vars(self._other)) if self._other.count else None
        out.sort(key=lambda r: (-r.hold_seconds, r.site))
        if other is not None:
            out.append(other)
        return out
