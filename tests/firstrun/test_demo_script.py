"""scripts/demo --with-prometheus never starts apt-get on a package database dpkg left unfinished.

dpkg reads its database from $DPKG_ADMINDIR: the test gives it a small real database
with one package left "half-configured", as an interrupted install leaves it, and a
PATH without prometheus, so that the script decides it has to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = """Package: poolwatch-probe
Status: install ok {state}
Priority: optional
Section: misc
Maintainer: nobody <nobody@example.invalid>
Architecture: all
Version: 1.0
Description: a package in the state under test

"""


def dpkg_database(where: Path, state: str) -> Path:
    (where / "updates").mkdir(parents=True)
    (where / "info").mkdir()
    (where / "available").touch()
    (where / "status").write_text(PACKAGE.format(state=state))
    (where / "info" / "poolwatch-probe.list").write_text("/.\n")
    (where / "info" / "poolwatch-probe.md5sums").touch()
    return where


def checkout_with_demo_installed(where: Path) -> Path:
    """The script in a directory whose .venv it takes as installed: it goes straight on."""
    (where / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "demo", where / "scripts" / "demo")
    (where / "pyproject.toml").touch()
    (where / ".venv" / "bin").mkdir(parents=True)
    (where / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stamp = where / ".venv" / ".poolwatch-demo-installed"
    stamp.touch()
    os.utime(where / "pyproject.toml", (0, 0))  # older than the stamp
    return where


def path_without_prometheus(where: Path, apt_calls: Path) -> str:
    """A PATH with the commands the script uses, but neither prometheus nor the real apt-get."""
    where.mkdir()
    for tool in ("bash", "dirname", "id", "dpkg", "grep", "touch"):
        found = shutil.which(tool)
        assert found, f"{tool} is not installed"
        (where / tool).symlink_to(found)
    # Should the script get past its check, this records it instead of installing anything.
    guard = where / "apt-get"
    guard.write_text(f'#!/bin/sh\necho "$@" >> {apt_calls}\nexit 1\n')
    guard.chmod(0o755)
    return str(where)


def run_demo_script(tmp_path: Path, state: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    if shutil.which("dpkg") is None or os.geteuid() != 0:
        message = "needs Debian's dpkg and root (the script installs with apt-get only as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    apt_calls = tmp_path / "apt-calls"
    env = {
        "PATH": path_without_prometheus(tmp_path / "bin", apt_calls),
        "PYTHON": sys.executable,
        "DPKG_ADMINDIR": str(dpkg_database(tmp_path / "dpkg", state)),
    }
    checkout = checkout_with_demo_installed(tmp_path / "checkout")
    out = subprocess.run(
        [str(checkout / "scripts" / "demo"), "--with-prometheus"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return out, apt_calls


def test_an_unfinished_dpkg_is_reported_with_the_repair_and_apt_is_not_run(tmp_path: Path):
    out, apt_calls = run_demo_script(tmp_path, "half-configured")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "dpkg --configure -a" in out.stderr, out.stderr
    assert not apt_calls.exists(), "apt-get ran on a broken package database"


def test_a_sound_dpkg_goes_on_to_apt_get_in_the_foreground(tmp_path: Path):
    # the same set-up with the package fully installed: the script proceeds to apt-get
    out, apt_calls = run_demo_script(tmp_path, "installed")
    assert "dpkg --configure -a" not in out.stderr, out.stderr
    assert apt_calls.read_text().splitlines()[0] == "update", out.stderr
    assert out.returncode != 0  # the recording apt-get fails, and the script stops there


def test_help_on_a_fresh_clone_says_what_it_installs_and_installs_nothing(tmp_path: Path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    out = subprocess.run([str(tmp_path / "scripts" / "demo"), "--help"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "poolwatch[demo]" in out.stdout and "--with-prometheus" in out.stdout
    assert not (tmp_path / ".venv").exists()
