"""Item 8: a command that needs an optional extra names it, before doing any work, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from .coreonly import run_core_only, run_without


def assert_names_extra(out, extra: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"poolwatch[{extra}]" in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_the_blocker_really_hides_non_core_packages():
    # ground truth for the tests below: with the hook, an extra's module cannot be imported
    out = run_core_only("alerts", "--list")
    # --list needs no YAML, so it works in a core install
    assert out.returncode == 0, out.stderr
    probe = run_without(("yaml",), "alerts", "--out", "-")
    assert probe.returncode != 0 and "yaml" in probe.stderr


def test_alerts_without_pyyaml_names_the_tools_extra(tmp_path: Path):
    out = run_core_only("alerts", "--out", str(tmp_path / "rules"))
    assert_names_extra(out, "tools")
    assert not (tmp_path / "rules").exists(), "it did work before saying what is missing"
    assert_names_extra(run_core_only("alerts", "--out", "-"), "tools")


@pytest.mark.slow
def test_demo_without_fastapi_names_the_demo_extra_before_starting_postgres():
    out = run_core_only("demo", "--duration", "1")
    assert_names_extra(out, "demo")
    assert "PostgreSQL" not in out.stdout, "it started a database before the check"


@pytest.mark.slow
def test_demo_with_prometheus_without_pyyaml_names_the_demo_extra():
    out = run_without(("yaml",), "demo", "--with-prometheus", "--duration", "1")
    assert_names_extra(out, "demo")
    assert "PostgreSQL" not in out.stdout, "it started a database before the check"


def test_the_demo_extra_brings_pyyaml_for_with_prometheus():
    import tomllib

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("[")[0].lower() for req in extras["demo"]}
    assert {"pyyaml", "fastapi", "uvicorn", "pgserver"} <= names


def test_dashboards_without_the_sdk_names_the_tools_extra(tmp_path: Path):
    out = run_core_only("dashboards", "--out", str(tmp_path / "boards"))
    assert_names_extra(out, "tools")
    assert not (tmp_path / "boards").exists()


def test_serve_without_fastapi_names_the_exporter_extra(tmp_path: Path):
    out = run_core_only("serve", "--multiproc-dir", str(tmp_path), "--port", "1")
    assert_names_extra(out, "exporter")
    # the check comes first: even a missing directory is reported after it
    out = run_core_only("serve", "--multiproc-dir", str(tmp_path / "nowhere"))
    assert_names_extra(out, "exporter")


def test_dashboards_configmap_without_pyyaml_names_the_tools_extra(tmp_path: Path):
    # the SDK alone renders the JSON boards; the ConfigMap is YAML
    out = run_without(("yaml",), "dashboards", "--format", "configmap", "--out", str(tmp_path))
    assert_names_extra(out, "tools")
    assert list(tmp_path.iterdir()) == [], "it did work before saying what is missing"
