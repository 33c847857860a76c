"""The instruction-count benchmark's arithmetic and its table, as pure functions.

The counts themselves need valgrind and minutes (benchmarks/instructions.py is run by
./scripts/bench, never by the suite); what is tested here is what turns counts into
figures: every family's warm-up-only count is subtracted from that family's counts
only, and the table shows the figures and ratios of the results it is given.
"""

from __future__ import annotations

import re

import pytest

from benchmarks.instructions import (
    BASELINE,
    BEFORE,
    CASES,
    CHECKOUT_LIBRARIES,
    POOLWATCH,
    PURE,
    PURE_CASES,
    QUERY_LIBRARIES,
    RAW,
    SITES,
    WARM_UP,
    Count,
    Results,
    per_operation,
    plan,
    table,
)


def _families(counts: list[Count]) -> set[tuple[str, str]]:
    return {(c.library, c.family) for c in counts}


def test_plan_counts_each_family_at_zero_once_and_every_case_once() -> None:
    counts = plan(ops=300, queries=70)
    zeros = [c for c in counts if c.ops == 0]
    assert len(zeros) == len(set(zeros)) == len(_families(counts))
    assert all(c.case == WARM_UP for c in zeros)
    assert all(c.zero() in zeros for c in counts)
    checkout = {(c.case, c.library) for c in counts if c.ops and c.family != "query"}
    # Python blocks differ from compiled ones in sync connection() only
    assert checkout == {
        (case, lib)
        for case in CASES
        for lib in CHECKOUT_LIBRARIES
        if lib != PURE or case in PURE_CASES
    }
    query = [c.library for c in counts if c.ops and c.family == "query"]
    assert sorted(query) == sorted(QUERY_LIBRARIES)
    # 5 sync checkout libraries, 4 async (no Python-blocks row) and 6 query libraries:
    # 15 families; children: 4 x 3 sync + 2 Python-blocks + 4 x 3 async + 6 x 2 query
    assert len(zeros) == 15 and len(counts) == 38
    assert {c.ops for c in counts if c.ops} == {300, 70}


def test_plan_without_before_leaves_its_families_out() -> None:
    counts = plan(ops=10, queries=10, with_before=False)
    assert BEFORE not in {c.library for c in counts}
    assert len(counts) == 38 - 3 * 2 - 2


def test_per_operation_subtracts_the_family_s_own_warm_up_count() -> None:
    counts = plan(ops=1_000, queries=400)
    # every family starts from a different count, and every row has its own figure, so a
    # row that subtracted another family's start, or divided by the wrong N, comes out wrong
    start = {family: 700_000_000 + 13_000_017 * i for i, family in enumerate(_families(counts))}
    truth = {c: 5_000 + 97 * i for i, c in enumerate(counts) if c.ops}
    totals = {c: start[(c.library, c.family)] + truth.get(c, 0) * c.ops for c in counts}
    # the order the children finish in is not the plan's
    results = per_operation(dict(reversed(totals.items())), ["a note"])
    for c, per_op in truth.items():
        if c.family == "query":
            assert results.per_query(c.library) == per_op
        else:
            assert results.per_op(c.case, c.library) == per_op
    assert (results.ops, results.queries, results.notes) == (1_000, 400, ("a note",))
    assert sum(len(by_lib) for by_lib in results.checkout.values()) == 4 * 4 + 1
    assert len(results.query) == len(QUERY_LIBRARIES)


def test_per_operation_refuses_a_count_without_its_warm_up() -> None:
    lone = Count(POOLWATCH, "sync", CASES[0], 10)
    with pytest.raises(ValueError, match="no warm-up-only count"):
        per_operation({lone: 1_000, Count(POOLWATCH, "async", WARM_UP, 0): 10})


def test_missing_rows_read_as_none() -> None:
    results = Results({CASES[0]: {POOLWATCH: 1.0}}, {RAW: 2.0}, 10, 10)
    assert results.per_op(CASES[0], BEFORE) is None
    assert results.per_op(CASES[1], POOLWATCH) is None
    assert results.per_query(BEFORE) is None


def _rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with *first_header*."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(re.sub(r"[,%+]", "", cell))


def _sample() -> Results:
    checkout = {
        case: {lib: 10_000.0 + 1_111 * i + 37 * j for j, lib in enumerate(CHECKOUT_LIBRARIES)}
        for i, case in enumerate(CASES)
    }
    query = {lib: 80_000.0 + 6_007 * j for j, lib in enumerate(QUERY_LIBRARIES)}
    return Results(checkout, query, 5_000, 2_000)


def test_table_shows_each_checkout_figure_and_its_ratios() -> None:
    results = _sample()
    rows = _rows(table(results), "case")
    assert [(r[0], r[1]) for r in rows] == [(c, lib) for c in CASES for lib in CHECKOUT_LIBRARIES]
    for case, lib, value, vs_before, vs_base, sites in rows:
        by_lib = results.checkout[case]
        assert _number(value) == round(by_lib[lib])
        assert float(vs_before) == pytest.approx(by_lib[lib] / by_lib[BEFORE], abs=5e-4)
        assert float(vs_base) == pytest.approx(by_lib[lib] / by_lib[BASELINE], abs=5e-4)
        if lib == SITES:
            assert _number(sites) == round(by_lib[SITES] - by_lib[POOLWATCH])
        else:
            assert sites == ""


def test_table_shows_each_query_figure_with_the_pool_s_share_over_raw() -> None:
    results = _sample()
    rows = _rows(table(results), "library")
    assert [r[0] for r in rows] == list(QUERY_LIBRARIES)
    raw = results.query[RAW]
    for lib, value, share, ratio in rows:
        pool = results.query[lib]
        assert _number(value) == round(pool)
        assert float(ratio) == pytest.approx(pool / raw, abs=5e-4)
        if lib == RAW:
            assert share == "—"
        else:
            assert _number(share) / 100 == pytest.approx((pool - raw) / pool, abs=5e-4)


def test_table_without_before_rows_says_so_and_leaves_the_ratio_blank() -> None:
    full = _sample()
    checkout = {
        case: {lib: v for lib, v in by_lib.items() if lib != BEFORE}
        for case, by_lib in full.checkout.items()
    }
    query = {lib: v for lib, v in full.query.items() if lib != BEFORE}
    text = table(Results(checkout, query, 5_000, 2_000, ("no before rows: no git",)))
    rows = _rows(text, "case")
    assert BEFORE not in {r[1] for r in rows} and len(rows) == len(CASES) * (
        len(CHECKOUT_LIBRARIES) - 1
    )
    assert {r[3] for r in rows} == {"—"}
    assert BEFORE not in {r[0] for r in _rows(text, "library")}
    assert "Note: no before rows: no git" in text
