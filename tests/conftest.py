"""Fixtures shared by the whole suite: one real PostgreSQL cluster per test session."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from poolwatch.embedded import Cluster, create_cluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the long variants: many more state-machine examples",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"poolwatch tests; CI={os.environ.get('CI', '')!r}"


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """A throwaway cluster, started once for the session and removed at the end."""
    cluster = create_cluster(max_connections=40)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def dsn(pg: Cluster) -> str:
    """A DSN whose password is a secret that must never be printed."""
    if not pg.is_running():  # a fault test may have stopped it
        pg.start()
    return pg.dsn()


@pytest.fixture
def secret(pg: Cluster) -> str:
    return pg.password


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="poolwatch")
    return caplog
