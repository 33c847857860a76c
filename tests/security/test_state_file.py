"""A damaged or hostile multiprocess state file cannot take the exporter down.

Not-a-number and infinite values, or text that cannot be encoded (lone surrogates,
written as JSON escapes), used to make /pools and /api/live (and, for names,
/metrics) answer 500 for every pool. Such a file is now skipped like any unreadable
one, and the other processes' pools are still served.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from poolwatch.metrics.multiprocess import FILE_PREFIX

from ..metrics.scrape import exporter

PATHS = ("/metrics", "/pools", "/api/live", "/readyz", "/healthz")


def write_state(directory: Path, pid: int, pool: str, value: object, *, kind: str = "connect"):
    state = {
        "pool": pool,
        "info": {"host": "h"},
        "scalars": [
            ["connections", ["used"], value],
            ["connections_max", [], 10],
            ["errors", [kind, "08"], value],
        ],
        "histograms": [],
    }
    # ensure_ascii keeps lone surrogates as \\udxxx escapes, as another writer could
    text = json.dumps({"pid": pid, "pools": [state], "retired": []}, ensure_ascii=True)
    (directory / f"{FILE_PREFIX}{pid}.json").write_text(text)


HOSTILE = [
    ("nan", dict(pool="bad", value="NaN")),
    ("infinity", dict(pool="bad", value="Infinity")),
    ("overflow", dict(pool="bad", value="1e400")),
    ("bare-nan", dict(pool="bad", value=float("nan"))),
    ("surrogate-name", dict(pool="bad\ud800", value=1)),
    ("surrogate-kind", dict(pool="bad", value=1, kind="k\udfff")),
]


@pytest.mark.parametrize(("label", "hostile"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_state_file_is_skipped_and_the_others_served(tmp_path, label, hostile):
    write_state(tmp_path, 1, "good", 3)  # pid 1 is always alive
    # a second live process: our own pid, with the hostile state
    import os

    write_state(tmp_path, os.getpid(), **hostile)
    with exporter(multiproc_dir=str(tmp_path)) as srv:
        for path in PATHS:
            r = httpx.get(srv.url + path, timeout=30)
            assert r.status_code == 200, (label, path, r.text[:200])
        names = [p["name"] for p in httpx.get(srv.url + "/pools", timeout=30).json()["pools"]]
        assert names == ["good"]
