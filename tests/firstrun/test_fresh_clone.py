"""The first run, as a newcomer does it: clone, ./scripts/demo, open the page, Ctrl-C.

The clone gets no .venv: scripts/demo must install what the demo needs (and only that)
from pyproject.toml, start it, and stop cleanly. The times it prints are for information;
the README's figures come from the same steps (see its "First run" section).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from poolwatch.embedded import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
#: bounds on waits, not performance targets: a loaded CI machine installs slowly
INSTALL_AND_START_BOUND = 600.0
STOP_BOUND = 60.0


def git() -> str:
    path = shutil.which("git")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("git is not installed")
        pytest.skip("git is not installed")
    return path


class DemoRun:
    """./scripts/demo in its own session, its output in a file that the test reads."""

    def __init__(self, clone: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("POOLWATCH_DSN", "VIRTUAL_ENV")}
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                ["./scripts/demo", "--port", str(port), "--scenario", "steady",
                 "--duration", "600"],
                cwd=clone, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, check, what: str, bound: float) -> float:
        """Seconds until *check()* holds; fails with the output if it never does."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < bound:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo exited ({self.proc.returncode}) before {what}:\n"
                            + self.output())  # fmt: skip
            try:
                if check():
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"no {what} after {bound:.0f} s:\n{self.output()}")

    def page_answers(self) -> bool:
        page = httpx.get(f"http://127.0.0.1:{self.port}/", timeout=5)
        return page.status_code == 200 and "<html" in page.text.lower()

    def pool_listed(self) -> bool:
        pools = httpx.get(f"http://127.0.0.1:{self.port}/pools", timeout=5).json()["pools"]
        return [p["name"] for p in pools] == ["demo"]

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the whole session is killed if it does not stop."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(STOP_BOUND)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise


def test_fresh_clone_demo_answers_then_stops_cleanly(tmp_path: Path):
    clone = tmp_path / "poolwatch"
    subprocess.run([git(), "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists()
    times = {}
    try:
        for run in ("first", "later"):
            demo = DemoRun(clone, free_port(), tmp_path / f"{run}.log")
            try:
                times[run] = demo.wait_for(
                    demo.page_answers, "status page", INSTALL_AND_START_BOUND
                )
                times[f"{run} pool"] = demo.wait_for(demo.pool_listed, "pool on /pools", 120)
            finally:
                code = demo.stop()
            output = demo.output()
            assert code == 0, output
            assert "embedded PostgreSQL stopped and removed" in output, output
            datadir = output.rsplit("(data in ", 1)[1].split(")", 1)[0]
            assert not Path(datadir).exists()
            left = subprocess.run(["pgrep", "-f", datadir], capture_output=True, text=True)
            assert left.stdout.strip() == "", f"processes left behind: {left.stdout}"
            assert "apt-get" not in output, "system packages touched without --with-prometheus"
            if run == "first":
                assert "installing poolwatch[demo]" in output  # it said what it was doing
            else:
                assert "installing" not in output, "a later run installed again"

        # the demo's venv has the [demo] extra, not the developers' tools
        python = str(clone / ".venv" / "bin" / "python")
        have = subprocess.run([python, "-c", "import fastapi, uvicorn, yaml, pgserver, psycopg"],
                              capture_output=True, text=True)  # fmt: skip
        assert have.returncode == 0, have.stderr
        for dev_only in ("pytest", "playwright", "mypy", "django"):
            probe = subprocess.run([python, "-c", f"import {dev_only}"], capture_output=True)
            assert probe.returncode != 0, f"{dev_only} was installed for the demo"
    finally:
        print(f"fresh clone: {', '.join(f'{k} {v:.1f} s' for k, v in times.items())}")
        shutil.rmtree(clone, ignore_errors=True)
