"""Scraping a real exporter over loopback HTTP, and reading samples back."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from poolwatch.exporter import ExporterThread, start_exporter


@dataclass
class Scrape:
    """The parsed families of one /metrics response."""

    text: str
    families: dict[str, object]

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for family in self.families.values():
            for s in family.samples:  # type: ignore[attr-defined]
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out.append((s.labels, s.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"expected one {name}{labels}, found {found}"
        return found[0][1]

    def bucket(self, name: str, le: str, **labels: str) -> float:
        return self.value(name + "_bucket", le=le, **labels)


def scrape(base_url: str, *, openmetrics: bool = False, token: str | None = None) -> Scrape:
    headers = {}
    if openmetrics:
        headers["Accept"] = "application/openmetrics-text; version=1.0.0"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = httpx.get(base_url + "/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    parse = parse_om if openmetrics else parse_text
    return Scrape(r.text, {f.name: f for f in parse(r.text)})


@contextmanager
def exporter(pools=(), **options) -> Iterator[ExporterThread]:
    """The exporter app served by uvicorn on a free loopback port, for one test."""
    from prometheus_client import CollectorRegistry

    options.setdefault("registry", CollectorRegistry())
    server = start_exporter(pools, port=0, **options)
    try:
        yield server
    finally:
        server.stop()


def require_tool(name: str) -> str:
    """The path of a command-line tool; in CI a missing tool fails the test."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/setup installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
