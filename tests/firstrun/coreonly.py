"""Run the ``poolwatch`` command as it behaves in an install with only the core dependencies.

A child interpreter's import finders are wrapped so that they do not find any
third-party package the core install would not have (anything in site-packages other
than psycopg, prometheus_client and typing_extensions), exactly as if its distribution
were absent: ``find_spec`` answers None and ``import`` raises ModuleNotFoundError.
This is how scripts/check_core_imports.py judges "core only", applied to the CLI.
"""

from __future__ import annotations

import subprocess
import sys

CORE = ("poolwatch", "psycopg", "psycopg_binary", "psycopg_c", "prometheus_client",
        "typing_extensions")  # fmt: skip

RUNNER = """
import importlib.abc, sys, sysconfig
site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
mode, names = sys.argv[1], set(sys.argv[2].split(",")) - {""}

class Hide(importlib.abc.MetaPathFinder):
    # wraps a finder: answers "not found" for the packages a core install lacks

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        spec = self.finder.find_spec(name, path, target)
        if spec is None:
            return None
        top = name.partition(".")[0]
        if mode == "without":
            return None if top in names else spec
        if top in names or top in sys.stdlib_module_names:
            return spec
        where = spec.origin or next(iter(spec.submodule_search_locations or []), "")
        return None if any(where.startswith(s) for s in site) else spec

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
from poolwatch.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_core_only(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """``poolwatch ARGS`` with only the core dependencies installed."""
    return _run("core", CORE, args, cwd)


def run_without(
    missing: tuple[str, ...], *args: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``poolwatch ARGS`` with everything installed but the top-level modules *missing*."""
    return _run("without", missing, args, cwd)


def _run(
    mode: str, names: tuple[str, ...], args: tuple[str, ...], cwd: str | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, mode, ",".join(names), *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip
