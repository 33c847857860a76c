"""The cache profile's arithmetic and table, and one small real run under cachegrind.

benchmarks/cache_profile.py is a profiling tool, run by hand (RESULTS.md quotes it):
what is tested is that it reads cachegrind's summary, subtracts the start-up child of
the same library and thread count only, divides by the queries actually made, and
that a real child under valgrind gives per-query figures of the right size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cache_profile import EVENTS, FLOOR, POOLWATCH, RAW, parse, per_query, table

ROOT = Path(__file__).resolve().parents[2]

SUMMARY = """\
==1== I   refs:      1,271,217,812
==1== I1  misses:       22,759,087
==1== LLi misses:           24,001
==1== D   refs:        540,000,000  (360,000,000 rd   + 180,000,000 wr)
==1== D1  misses:       20,406,083  ( 18,593,006 rd   +   1,813,077 wr)
==1== LLd misses:          400,000  (    100,000 rd   +     300,000 wr)
==1== LL misses:           424,001  (    124,001 rd   +     300,000 wr)
==1== Branches:        200,000,000  (180,000,000 cond +  20,000,000 ind)
==1== Mispredicts:      25,793,149  ( 13,644,428 cond +  12,148,721 ind)
"""


def test_parse_reads_the_totals_not_the_split_columns() -> None:
    assert parse(SUMMARY) == {
        "instructions": 1_271_217_812,
        "I1 misses": 22_759_087,
        "D1 misses": 20_406_083,
        "LL misses": 424_001,
        "branch mispredictions": 25_793_149,
    }
    with pytest.raises(ValueError, match="branch mispredictions"):
        parse(SUMMARY.replace("Mispredicts", "Mispredicted"))


def _totals(base: int, per: int, made: int) -> dict[str, int]:
    return {event: base + i + per * made for i, event in enumerate(EVENTS)}


def test_per_query_subtracts_its_own_start_up_and_divides_by_queries_made() -> None:
    totals = {
        (RAW, 1, 0): _totals(1_000, 7, 0),
        (RAW, 1, 300): _totals(1_000, 7, 300),
        (FLOOR, 3, 0): _totals(50_000, 11, 0),
        # 100 queries in 3 threads: 33 each, 99 made
        (FLOOR, 3, 100): _totals(50_000, 11, 99),
    }
    rows = per_query(totals)
    assert set(rows) == {(RAW, 1), (FLOOR, 3)}
    assert all(v == pytest.approx(7.0) for v in rows[RAW, 1].values())
    assert all(v == pytest.approx(11.0) for v in rows[FLOOR, 3].values())


def test_the_table_compares_with_the_floor_of_the_same_thread_count() -> None:
    rows = {
        (POOLWATCH, 4): dict.fromkeys(EVENTS, 120.0),
        (FLOOR, 4): dict.fromkeys(EVENTS, 100.0),
        (RAW, 4): dict.fromkeys(EVENTS, 90.0),
        (POOLWATCH, 1): dict.fromkeys(EVENTS, 80.0),  # no floor with 1 thread
    }
    lines = table(rows).splitlines()
    body = [line for line in lines if line.startswith("| 1 ") or line.startswith("| 4 ")]
    assert body[0] == "| 1 | poolwatch | " + " | ".join(["80"] * len(EVENTS)) + " |"
    # raw first, then the floor, then poolwatch: the order of LIBRARIES
    assert body[1] == "| 4 | raw connections | " + " | ".join(["90 (-10)"] * len(EVENTS)) + " |"
    assert body[2] == f"| 4 | {FLOOR} | " + " | ".join(["100"] * len(EVENTS)) + " |"
    assert body[3] == "| 4 | poolwatch | " + " | ".join(["120 (+20)"] * len(EVENTS)) + " |"


def test_a_small_real_run_gives_per_query_figures_of_the_right_size(dsn: str) -> None:
    if shutil.which("valgrind") is None:
        message = "valgrind is not installed (apt-get install valgrind)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cmd = [sys.executable, "-m", "benchmarks.cache_profile", "--dsn", dsn]
    cmd += ["--library", RAW, "--threads", "1", "--queries", "300"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {
        line.split(" | ")[1]: line.split(" | ")[2:]
        for line in run.stdout.splitlines()
        if line.startswith("| 1 |")
    }
    assert set(rows) == {RAW, FLOOR}  # the floor comes along, as the comparison
    raw_instructions = int(rows[RAW][0].split(" ")[0].replace(",", ""))
    floor_instructions = int(rows[FLOOR][0].replace(",", ""))
    # A SELECT 1 costs the client tens of thousands of instructions (RESULTS.md:
    # about 79,000 raw); a pool adds some thousands, never removes.
    assert 30_000 < raw_instructions < 300_000
    assert raw_instructions < floor_instructions < raw_instructions * 1.5
    assert dsn not in run.stdout + run.stderr
