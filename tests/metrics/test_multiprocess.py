"""Multiprocess mode under a real gunicorn with 2 uvicorn workers: /metrics covers both."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from poolwatch.embedded import free_port

from ..alerts.stack import Process
from .scrape import Scrape

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MAX_SIZE = 3


@pytest.fixture
def gunicorn(dsn, tmp_path, request):
    """(url, master process) of gunicorn with 2 workers; an indirect parameter N makes
    each worker exit after N requests (--max-requests), and gunicorn start another."""
    max_requests = getattr(request, "param", None)
    recycle = ["--max-requests", str(max_requests)] if max_requests else []
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "POOLWATCH_TEST_DSN": dsn,
        "POOLWATCH_TEST_MAX_SIZE": str(MAX_SIZE),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    proc = Process(
        [
            sys.executable, "-m", "gunicorn", "tests.metrics.mp_app:app",
            "--workers", "2", "--worker-class", "uvicorn_worker.UvicornWorker",
            "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5", *recycle,
        ],
        tmp_path / "gunicorn.log", env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/readyz")
        yield url, proc.proc
    finally:
        proc.stop()


def acquisitions(s: Scrape) -> float:
    return s.value("poolwatch_acquire_seconds_count", pool="mp", outcome="ok")


def scrape_each_worker(url: str, want: int = 2, limit: int = 200) -> dict[str, Scrape]:
    """Scrape until the answers came from *want* different workers (bounded)."""
    seen: dict[str, Scrape] = {}
    for _ in range(limit):
        r = httpx.get(url + "/metrics", headers={"Connection": "close"}, timeout=10)
        seen[r.headers["x-worker-pid"]] = Scrape(r.text, {})
        if len(seen) >= want:
            break
    from prometheus_client.parser import text_string_to_metric_families

    for s in seen.values():
        s.families = {f.name: f for f in text_string_to_metric_families(s.text)}
    return seen


def test_metrics_cover_every_worker(gunicorn):
    url, proc = gunicorn
    done: dict[str, int] = {}
    for _ in range(300):  # bounded: stop once both workers served some work
        r = httpx.get(url + "/work", params={"n": 3}, headers={"Connection": "close"}, timeout=10)
        body = r.json()
        done[str(body["pid"])] = done.get(str(body["pid"]), 0) + body["n"]
        if len(done) == 2 and min(done.values()) >= 9:
            break
    assert len(done) == 2, f"only one worker answered: {done}"
    total = sum(done.values())

    # Each worker publishes its state at least once a second: wait for both to land.
    deadline = time.monotonic() + 10
    while True:
        answers = scrape_each_worker(url)
        values = {pid: acquisitions(s) for pid, s in answers.items()}
        if len(answers) == 2 and all(v == total for v in values.values()):
            break
        assert time.monotonic() < deadline, f"scrapes {values} never reached {total}"
        time.sleep(0.3)
    for s in answers.values():
        # Gauges add up over the live workers; the info series appears once.
        assert s.value("poolwatch_connections_max", pool="mp") == 2 * MAX_SIZE
        assert len(s.samples("poolwatch_pool_info", pool="mp")) == 1
        assert s.text.count('poolwatch_waits_total{pool="mp"}') == 1

    # A worker dies: gunicorn starts another; the counters never go backwards.
    victim = int(next(iter(done)))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        answers = scrape_each_worker(url)
        pids = set(answers) - {str(victim)}
        ok = len(pids) == 2 and all(
            acquisitions(answers[p]) >= total
            and answers[p].value("poolwatch_connections_max", pool="mp") == 2 * MAX_SIZE
            for p in pids
        )
        if ok:
            break
        for p in pids:
            assert acquisitions(answers[p]) >= total, "a counter went backwards"
        assert time.monotonic() < deadline, "the replacement worker never showed up"
        time.sleep(0.3)
    assert proc.poll() is None


def counter_samples(s: Scrape) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram sample of pool "mp" (buckets, counts, sums)."""
    out = {}
    for family in s.families.values():
        if family.type not in ("counter", "histogram"):  # type: ignore[attr-defined]
            continue
        for sample in family.samples:  # type: ignore[attr-defined]
            if sample.labels.get("pool") == "mp":
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize("gunicorn", [15], indirect=True)
def test_recycled_workers_never_take_a_count_back(gunicorn):
    """gunicorn replaces each worker after 15 requests while we work and scrape.

    Scrapes land on whichever worker accepts them; across all of them no counter
    or bucket of the pool goes down, and at the end the count equals the checkouts
    made, every recycled worker's included.
    """
    url, proc = gunicorn
    highest: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    workers: set[str] = set()
    made = 0

    def check(s: Scrape) -> None:
        for key, value in counter_samples(s).items():
            assert value >= highest.get(key, 0), f"{key} went back from {highest[key]} to {value}"
            highest[key] = value

    # A worker that reached --max-requests can drop a connection it had accepted (the
    # uvicorn worker stops without answering it). A dropped scrape is just a missed
    # scrape; a dropped /work request may or may not have run, so it widens the
    # expected total by its n instead of being guessed.
    unsure = 0
    for i in range(120):  # bounded: 120 requests, every third one a scrape
        scrape = i % 3 == 2
        try:
            r = httpx.get(
                url + ("/metrics" if scrape else "/work"),
                params=None if scrape else {"n": 2},
                headers={"Connection": "close"},
                timeout=20,
            )
        except httpx.RemoteProtocolError:
            unsure += 0 if scrape else 2
            continue
        if scrape:
            check(Scrape(r.text, {f.name: f for f in parse_text(r.text)}))
        else:
            made += r.json()["n"]
        workers.add(r.headers["x-worker-pid"])
    assert len(workers) > 3, f"workers were not recycled: {workers}"
    assert unsure <= 20, f"{unsure // 2} of 80 work requests were dropped"

    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(url + "/metrics", headers={"Connection": "close"}, timeout=20)
        except httpx.RemoteProtocolError:
            assert time.monotonic() < deadline, "every scrape was dropped"
            continue
        s = Scrape(r.text, {f.name: f for f in parse_text(r.text)})
        check(s)
        exported = acquisitions(s)
        if made <= exported <= made + unsure:
            break
        assert exported < made, f"{exported} exported, {made} made (+{unsure} unsure)"
        assert time.monotonic() < deadline, f"{exported} exported, {made} made (+{unsure} unsure)"
        time.sleep(0.3)
    assert proc.poll() is None
