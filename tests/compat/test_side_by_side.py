"""The same scripted scenarios against psycopg_pool and poolwatch, sync and async.

Every observation that differs must be one of the deliberate differences listed in the
README's table (its last column names the observations, as ``scenario.key`` patterns);
an undocumented difference fails the test, and so does a documented one that no longer
shows up anywhere.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from pathlib import Path

import psycopg_pool
import pytest

import poolwatch

from .scenarios import SCENARIOS
from .sidebyside import differences, run_scenario

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Where poolwatch behaves differently, on purpose"


def documented_patterns() -> list[str]:
    """The ``scenario.key`` patterns of the README's table of deliberate differences."""
    text = README.read_text()
    assert SECTION in text, "the README lost its table of deliberate differences"
    table = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    patterns: list[str] = []
    for line in table.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            last = line.rstrip().rstrip("|").rsplit("|", 1)[-1]
            patterns += re.findall(r"`([^`]+)`", last)
    return patterns


def undocumented(found: dict[str, tuple[object, object]], patterns: list[str]) -> dict:
    return {k: v for k, v in found.items() if not any(fnmatch.fnmatch(k, p) for p in patterns)}


RUNS = [(s, a) for s in SCENARIOS for a in (False, True)]
_seen: dict[str, set[str]] = {}
_ran: set[str] = set()


@pytest.mark.db
@pytest.mark.parametrize(
    ("scenario", "is_async"),
    RUNS,
    ids=[f"{s.__name__}-{'async' if a else 'sync'}" for s, a in RUNS],
)
def test_side_by_side(scenario, is_async, dsn, pg):
    patterns = documented_patterns()
    theirs = asyncio.run(run_scenario(scenario, psycopg_pool, is_async, dsn, pg))
    ours = asyncio.run(run_scenario(scenario, poolwatch, is_async, dsn, pg))
    name = scenario.__name__
    found = {f"{name}.{k}": v for k, v in differences(theirs, ours).items()}
    for key in found:
        for p in patterns:
            if fnmatch.fnmatch(key, p):
                _seen.setdefault(p, set()).add(key)
    missing = undocumented(found, patterns)
    assert not missing, "differences from psycopg_pool that the README does not list:\n" + (
        "\n".join(f"DIFF {k}: psycopg_pool {a!r}, poolwatch {b!r}" for k, (a, b) in missing.items())
    )
    assert len(theirs) > 3  # the scenario observed something besides the driver's records
    _ran.add(f"{name}-{is_async}")


@pytest.mark.db
def test_every_documented_difference_still_shows():
    """Runs last in this module: a documented pattern that matched nothing is stale."""
    if len(_ran) < len(RUNS):
        pytest.skip("needs every side-by-side run to have passed first, in this session")
    stale = [p for p in documented_patterns() if p not in _seen]
    assert stale == [], "README documents differences the side-by-side test no longer sees"


def test_scenarios_call_every_public_method():
    """Each public method and property of psycopg_pool's pools appears in the scripts."""
    import inspect as _inspect

    from . import scenarios, sidebyside

    text = _inspect.getsource(scenarios) + _inspect.getsource(sidebyside)
    names = {
        n
        for cls in (psycopg_pool.ConnectionPool, psycopg_pool.NullConnectionPool)
        for n, _ in _inspect.getmembers(cls)
        if not n.startswith("_")
    }
    names -= {"worker", "run_task", "schedule_task"}  # psycopg_pool's internals, public by name
    missing = sorted(n for n in names if f".{n}" not in text and f"{n}=" not in text)
    assert missing == []
