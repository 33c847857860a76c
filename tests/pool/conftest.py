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
def preempt_often() -> Iterator[None]:
    """Switch threads about every microsecond (the default is 5 ms)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
