"""Item 9: the errors a newcomer meets first say what is wrong and which flag changes it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolwatch.embedded import free_port

from ..metrics.scrape import require_tool


def poolwatch(*args: str, cwd: Path | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k != "POOLWATCH_DSN"}
    return subprocess.run([sys.executable, "-m", "poolwatch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port that something else is listening on, as another program would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.slow
def test_exporter_port_in_use_is_one_line_naming_port_and_flag(taken_port: int):
    out = poolwatch("demo", "--port", str(taken_port), "--duration", "30")
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in out.stderr.splitlines() if str(taken_port) in line]
    assert len(lines) == 1 and "--port" in lines[0] and "in use" in lines[0], text
    assert "PostgreSQL is up" not in text, "it started a database it could not serve"


def test_serve_on_a_taken_port_says_so_in_one_line_before_claiming_to_serve(
    taken_port: int, tmp_path: Path
):
    out = poolwatch("serve", "--multiproc-dir", str(tmp_path), "--port", str(taken_port))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    assert "serving" not in out.stdout, "it announced a server that never listened"
    lines = [line for line in out.stderr.splitlines() if str(taken_port) in line]
    assert len(lines) == 1 and "--port" in lines[0] and "in use" in lines[0], text


@pytest.mark.slow
def test_with_prometheus_on_a_taken_port_fails_clearly_instead_of_printing_it(taken_port: int):
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    out = poolwatch("demo", "--with-prometheus", "--prometheus-port", str(taken_port),
                    "--port", str(free_port()), "--duration", "20")  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    assert not re.search(rf"prometheus\s+http://127\.0\.0\.1:{taken_port}", text), text
    assert re.search(rf"{taken_port}.*in use.*--prometheus-port", out.stderr), text


def test_a_default_port_that_is_taken_is_replaced_by_a_free_one(taken_port: int):
    from poolwatch.demo.ports import PortInUse, choose_port

    port, note = choose_port("127.0.0.1", taken_port, explicit=False, flag="--prometheus-port")
    assert port != taken_port and note is not None and str(taken_port) in note
    with socket.socket() as s:  # the port it chose is really free
        s.bind(("127.0.0.1", port))
    with pytest.raises(PortInUse, match=rf"{taken_port}.*in use.*--prometheus-port"):
        choose_port("127.0.0.1", taken_port, explicit=True, flag="--prometheus-port")
    free = free_port()
    assert choose_port("127.0.0.1", free, explicit=True, flag="--port") == (free, None)


def test_dashboards_out_dash_writes_to_stdout_like_alerts(tmp_path: Path):
    pytest.importorskip("grafana_foundation_sdk")
    out = poolwatch("dashboards", "--out", "-", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    board = json.loads(out.stdout)
    assert board["title"] and board["panels"]
    assert list(tmp_path.iterdir()) == [], "it wrote files besides stdout"


@pytest.mark.parametrize(
    "command, default_path",
    [("alerts", "alerts/poolwatch.rules.yml"), ("dashboards", "dashboards/poolwatch.json")],
)
def test_help_says_where_files_are_written_by_default(command: str, default_path: str):
    out = poolwatch(command, "--help")
    assert out.returncode == 0
    assert default_path in " ".join(out.stdout.split()), out.stdout


@pytest.mark.parametrize("command", ["alerts", "dashboards"])
def test_out_naming_an_existing_file_is_a_clear_error(command: str, tmp_path: Path):
    if command == "dashboards":
        pytest.importorskip("grafana_foundation_sdk")
    existing = tmp_path / "rules.yml"
    existing.write_text("mine\n")
    out = poolwatch(command, "--out", str(existing))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    assert str(existing) in out.stderr and "directory" in out.stderr, text
    assert existing.read_text() == "mine\n"
