"""Fixtures shared by the pool tests."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    """A fresh one-column table (x int) for one test: its committed rows are the ground truth."""
    name = f"relend_{uuid.uuid4().hex[:10]}"
    pg.execute(f"CREATE TABLE {name} (x int)")
    yield name
    pg.execute(f"DROP TABLE {name}")


@pytest.fixture
def compiled_pool(dsn: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An open sync pool of 2 that has compiled blocks (a desk), named after the module."""
    from poolwatch import ConnectionPool

    name = request.module.__name__.rpartition(".")[2]
    with ConnectionPool(dsn, min_size=2, name=name, kwargs={"autocommit": True}) as p:
        p.wait(timeout=30)
        assert p._desk is not None
        yield p


@pytest.fixture
def preempt_often() -> Iterator[None]:
    """Switch threads about every microsecond (the default is 5 ms)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
