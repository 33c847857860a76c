"""Who holds the pool: naming the code that took a checkout, and a bounded table per pool.

The pool calls a `SiteFinder` in the borrower's own thread or task, once per checkout,
only while attribution is on (`BasePool.track_call_sites`), on its fast checkout path
too. The finder walks the stack outwards to the first frame that is neither the pool's
machinery nor known framework plumbing: the code a user would go and change.

Cost: the walk runs while the stack is live (a context manager written as a generator
has no caller once suspended, and a caller's line moves on once the checkout returns
to it), so it must be cheap. Every decision is cached by the *identity* of a code
object, and a name by that identity and the borrower's instruction offset: hashing a
code object hashes its bytecode and constants (hundreds of ns for a large function),
an ``id()`` costs nothing, and reading ``f_lasti`` is cheaper than ``f_lineno``, which
decodes the line table. Each cache entry holds its code object, so an identity cannot
be reused by another code object while its entry exists. A repeated checkout costs
two frame reads and two look-ups, a few hundred ns (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import CodeType, FrameType
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
#: Modules that run an event loop's callbacks. A walk that reaches one left the task
#: that made the checkout: that task's coroutine was getconn() itself
#: (``asyncio.wait_for(pool.getconn(), 5)`` on Python 3.11, ``create_task(pool.getconn())``)
#: and its borrower is not on the stack; the code that started the loop is not it.
LOOP_RUNNERS: Final = ("asyncio.events", "asyncio.base_events", "asyncio.runners")
#: Sites kept per pool by default, and the most a pool may ever keep or export.
DEFAULT_TOP: Final = 20
MAX_TOP: Final = 100
#: Where the checkouts of sites pushed out of a full table are added up.
OTHER: Final = "(other)"
UNKNOWN: Final = "(unknown)"
# The walk gives up after this many frames (deep recursion inside plumbing).
_MAX_DEPTH = 64
# What the cache holds for a loop runner's code: a table of names that stays empty,
# so that the walk's hot path needs no test of its own for it.
_LOOP_RUNNER: Final[dict[int, str]] = {}
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
    """Names the borrower of a checkout: the pool calls `checkout_site` from its own code.

    *skip* lists extra module names whose frames are plumbing (a company's own
    database helpers, say), added to `DEFAULT_SKIP`. Calling the finder itself names
    its caller's borrower (its caller's frame is the first one looked at).
    """

    def __init__(self, skip: Iterable[str] = ()) -> None:
        extra = tuple(skip)
        for name in extra:
            if not isinstance(name, str) or not name:
                raise ValueError(f"skip must hold module names, got {name!r}")
        self.skip: tuple[str, ...] = DEFAULT_SKIP + extra
        # id(code) -> (code, None) for plumbing, or (code, {instruction offset: name})
        # for a borrower's code. The code object in the value keeps its id from being
        # given to another code object while the entry exists.
        self._codes: dict[int, tuple[CodeType, dict[int, str] | None]] = {}
        # The last plumbing code met first (right above the pool): skipped without a
        # look-up next time. Only ever plumbing, so skipping it is always right.
        self._hop: CodeType | None = None

    def __call__(self) -> str:
        return self.checkout_site()  # its frame is skipped, so the walk starts at our caller

    def checkout_site(self) -> str:
        """The site of the checkout under way; skips the frame of whoever calls this."""
        # _getframe(2) makes a frame object for the first frame looked at only: the
        # caller's (the pool's) is plumbing by definition and is not materialised.
        try:
            frame = sys._getframe(2)
        except ValueError:  # the caller is the outermost frame (a thread's own target)
            return UNKNOWN
        code = frame.f_code
        passed = 0  # plumbing frames walked past
        if code is self._hop:  # pool.connection()'s own frame, usually: step over it
            back = frame.f_back
            if back is None:
                return UNKNOWN
            frame = back
            code = frame.f_code
            passed = 1
        # Subscripts rather than .get(): a hit (nearly every call) is cheaper, and a
        # miss happens once per code object or line.
        codes = self._codes
        while True:
            try:
                lines = codes[id(code)][1]
            except KeyError:
                lines = self._learn(frame)
            if lines is not None:
                try:
                    return lines[frame.f_lasti]
                except KeyError:
                    return self._name(frame, lines)
            if passed == 0:  # the first frame above the pool, and plumbing
                self._hop = code
            passed += 1
            back = frame.f_back
            if back is None or passed >= _MAX_DEPTH:
                return UNKNOWN
            frame = back
            code = frame.f_code

    def _learn(self, frame: FrameType) -> dict[int, str] | None:
        """Decide once whether *frame*'s code is plumbing (the module it was defined in).

        Returns None for plumbing, `_LOOP_RUNNER` for an event loop's own code, else
        the (new, empty) names of the code's lines.
        """
        codes = self._codes
        if len(codes) > _MAX_CACHED:
            codes.clear()
        module = frame.f_globals.get("__name__")
        module = module if isinstance(module, str) else ""
        lines: dict[int, str] | None
        if _module_matches(module, LOOP_RUNNERS):
            lines = _LOOP_RUNNER
        else:
            lines = None if _module_matches(module, self.skip) else {}
        codes[id(frame.f_code)] = (frame.f_code, lines)
        return lines

    @staticmethod
    def _name(frame: FrameType, lines: dict[int, str]) -> str:
        """Name *frame*'s current line once; later checkouts there find it by offset."""
        if lines is _LOOP_RUNNER:
            return UNKNOWN
        code = frame.f_code
        name = lines[frame.f_lasti] = describe(code.co_filename, frame.f_lineno, code.co_name)
        return name


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
