"""poolwatch as it was before issue 17, importable beside today's, for side-by-side rows.

"No worse than before" compared with a figure from an earlier run mixes the change with
the machine's load on two different days. Instead the pool package of the commit the
issue started from is taken out of git, renamed `poolwatch_before` (its absolute imports
rewritten), and measured in the same rounds as today's code.
"""

from __future__ import annotations

import atexit
import importlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from types import ModuleType

#: The main-branch commit whose benchmark results issue 17 quotes ("today" in its goals).
COMMIT = "47e8516"
NAME = f"poolwatch {COMMIT} (before issue 17)"
_ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"\b(from|import) poolwatch\b")


def load() -> ModuleType | None:
    """Import the old package as `poolwatch_before`; None (with a note) if git cannot give it."""
    if "poolwatch_before" in sys.modules:
        return sys.modules["poolwatch_before"]
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", COMMIT, "src/poolwatch"],
            cwd=_ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as ex:
        print(f"  before: no side-by-side rows ({COMMIT} not in git here: {ex})", file=sys.stderr)
        return None
    where = Path(tempfile.mkdtemp(prefix="poolwatch-before-"))
    # Gone when this process ends (the instruction counts' children, which import from
    # it, end before their parent does).
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / "poolwatch_before"
    (where / "src" / "poolwatch").rename(package)
    for source in package.rglob("*.py"):
        text = source.read_text()
        source.write_text(_IMPORT.sub(r"\1 poolwatch_before", text))
    sys.path.insert(0, str(where))
    return importlib.import_module("poolwatch_before")
