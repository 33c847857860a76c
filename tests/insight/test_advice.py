"""`GET /pools/{name}/advice`, the verdict in /pools and /api/live, and `poolwatch advise`.

A real pool under real load (more callers than connections), its real exporter, and
the command run as a user runs it; with --prometheus, a real Prometheus scraping it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from poolwatch import ConnectionPool, PoolTimeout
from poolwatch.embedded import free_port

from ..alerts.stack import Process
from ..metrics.scrape import exporter, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
TOKEN = "advice-token-1"


class Load:
    """*callers* threads each taking a connection for *hold* seconds, until stopped."""

    def __init__(self, pool: ConnectionPool, callers: int, hold: float) -> None:
        self.stop = threading.Event()
        self.requests = 0
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(pool, hold), daemon=True)
            for _ in range(callers)
        ]

    def run(self, pool: ConnectionPool, hold: float) -> None:
        while not self.stop.is_set():
            try:
                with pool.connection(timeout=5) as conn:
                    conn.execute("SELECT pg_sleep(%s)", (hold,))
            except PoolTimeout:
                pass
            with self.lock:
                self.requests += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def starved(dsn: str) -> Iterator[tuple[ConnectionPool, str]]:
    """A pool of 2 with 6 callers, served with a token, after 4 s of load."""
    with ConnectionPool(dsn, min_size=2, max_size=2, name="starved", timeout=5) as pool:
        pool.wait()
        with exporter([pool], token=TOKEN) as srv, Load(pool, 6, 0.03):
            auth = {"Authorization": f"Bearer {TOKEN}"}
            httpx.get(srv.url + "/pools", headers=auth, timeout=10)  # starts the sampler
            time.sleep(4)
            yield pool, srv.url


def advise_cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"POOLWATCH_TOKEN": token} if token else {})
    return subprocess.run(
        [sys.executable, "-m", "poolwatch.cli", "advise", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_advice_endpoint_predicts_every_size_and_recommends_one(starved):
    pool, url = starved
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + "/pools/starved/advice", timeout=10).status_code == 401
    r = httpx.get(url + "/pools/starved/advice", params={"cores": 4}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    advice = r.json()
    budget = advice["fleet_budget"]
    assert budget == pool.snapshot().server_max_connections  # one instance: all of it
    assert [s["max_size"] for s in advice["sizes"]] == list(range(1, budget + 1))
    assert advice["database_capacity"] == 8  # 2 x 4 cores
    m = advice["measured"]
    assert m["max_size"] == 2 and m["waits"] > 0
    # 6 callers each holding ~30 ms: about 6 connections' worth of demand at most
    assert 0.03 <= m["hold_seconds_mean"] < 0.2
    assert advice["verdict"]["cause"] == "too_small"
    best = advice["recommended_max_size"]
    assert 2 < best <= 8
    by_size = {s["max_size"]: s for s in advice["sizes"]}
    assert by_size[best]["wait_p95_seconds"] <= advice["target_wait_p95_seconds"]
    assert by_size[best - 1]["wait_p95_seconds"] > advice["target_wait_p95_seconds"]
    # predicted waits shrink as the pool grows
    p95s = [by_size[s]["wait_p95_seconds"] for s in range(1, best + 1)]
    assert p95s == sorted(p95s, reverse=True)
    assert "database capacity unknown" not in " ".join(advice["notes"])


def test_verdict_is_in_pools_and_on_the_live_view(starved):
    _, url = starved
    auth = {"Authorization": f"Bearer {TOKEN}"}
    (view,) = httpx.get(url + "/pools", headers=auth, timeout=10).json()["pools"]
    assert view["verdict"]["cause"] == "too_small"
    assert "requests waited" in view["verdict"]["why"]
    (live,) = httpx.get(url + "/api/live", headers=auth, timeout=10).json()["pools"]
    assert live["verdict"]["cause"] == "too_small"


def test_advice_endpoint_errors(starved):
    _, url = starved
    auth = {"Authorization": f"Bearer {TOKEN}"}
    missing = httpx.get(url + "/pools/nope/advice", headers=auth, timeout=10)
    assert missing.status_code == 404 and "no pool" in missing.text
    for params in ({"target_p95": "0"}, {"cores": "0"}, {"instances": "0"}, {"target_p95": "nan"}):
        bad = httpx.get(url + "/pools/starved/advice", params=params, headers=auth, timeout=10)
        assert bad.status_code == 422, (params, bad.text)


def test_cli_reads_the_exporter(starved):
    _, url = starved
    out = advise_cli(url, "--cores", "4")
    assert out.returncode == 0, out.stderr
    assert "pool starved:" in out.stdout
    assert "verdict: too_small:" in out.stdout
    assert "<- recommended" in out.stdout and "(now)" in out.stdout
    assert "recommended max_size:" in out.stdout and "database capacity 8" in out.stdout
    as_json = advise_cli(url, "--json", "--pool", "starved")
    assert as_json.returncode == 0 and '"recommended_max_size"' in as_json.stdout


def test_cli_errors_say_what_to_do(starved):
    _, url = starved
    unknown = advise_cli(url, "--pool", "nope")
    assert unknown.returncode == 2
    assert "no pool named 'nope'" in unknown.stderr and "'starved'" in unknown.stderr
    no_token = advise_cli(url, token=None)
    assert no_token.returncode == 1 and "POOLWATCH_TOKEN" in no_token.stderr
    port = free_port()
    down = advise_cli(f"http://127.0.0.1:{port}")
    assert down.returncode == 1 and "cannot reach" in down.stderr
    assert advise_cli().returncode == 2  # neither source
    assert advise_cli(url, "--target-p95", "-1").returncode == 2
    assert advise_cli("--prometheus", url).returncode == 2  # --pool required
    help_text = advise_cli("--help").stdout
    for option in ("--prometheus", "--window", "--cores", "--instances", "--target-p95"):
        assert option in help_text


def test_cli_reads_prometheus(dsn: str, tmp_path: Path):
    prometheus = require_tool("prometheus")
    with ConnectionPool(dsn, min_size=2, max_size=2, name="scraped", timeout=5) as pool:
        pool.wait()
        with exporter([pool]) as srv:
            prom_port = free_port()
            target = srv.url.removeprefix("http://")
            job = f"{{job_name: poolwatch, static_configs: [{{targets: ['{target}']}}]}}"
            (tmp_path / "prom.yml").write_text(
                f"global: {{scrape_interval: 1s}}\nscrape_configs: [{job}]\n"
            )
            prom = Process(
                [prometheus, f"--config.file={tmp_path / 'prom.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                tmp_path / "prom.log",
            )  # fmt: skip
            try:
                prom_url = f"http://127.0.0.1:{prom_port}"
                prom.wait_http(prom_url + "/-/ready", timeout=60)
                with Load(pool, 6, 0.03) as load:
                    started = time.monotonic()
                    time.sleep(12)
                    rate = load.requests / (time.monotonic() - started)
                out = advise_cli("--prometheus", prom_url, "--pool", "scraped",
                                 "--window", "8s", "--step", "1s", "--json")  # fmt: skip
                unknown = advise_cli("--prometheus", prom_url, "--pool", "nope")
            finally:
                prom.stop()
    assert out.returncode == 0, out.stderr
    advice = json.loads(out.stdout)
    assert advice["measured"]["max_size"] == 2
    # Prometheus' increase() extrapolates at the window's edges: a loose bound
    assert advice["measured"]["requests_per_second"] == pytest.approx(rate, rel=0.3)
    assert advice["verdict"]["cause"] == "too_small"
    assert advice["recommended_max_size"] > 2
    assert unknown.returncode == 2 and "no pool named 'nope'" in unknown.stderr
