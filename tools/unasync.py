#!/usr/bin/env python3
"""Generate the sync twins of the async pool modules (and their tests).

The async code is the source of truth. Each ``*_async.py`` file listed below is
rewritten line by line with an explicit table of substitutions into the file without
the ``_async`` suffix. ``--check`` fails if a generated file is out of date, and every
run fails if a substitution is never used (a stale table hides mistakes).

    python tools/unasync.py           # regenerate
    python tools/unasync.py --check   # verify, as CI does
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SOURCES = [
    "src/poolwatch/pool/pool_async.py",
    "src/poolwatch/pool/null_pool_async.py",
    "src/poolwatch/pool/sched_async.py",
    "src/poolwatch/pool/tasks_async.py",
    "src/poolwatch/pool/upkeep_async.py",
    "tests/pool/test_pool_async.py",
    "tests/pool/test_null_pool_async.py",
    "tests/pool/test_faults_async.py",
    "tests/metrics/test_truth_async.py",
    "tests/faults/test_network_async.py",
]

# (pattern, replacement). Patterns are regular expressions, applied in this order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\basync def ", "def "),
    (r"\basync with ", "with "),
    (r"\bawait ", ""),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"\bAsyncNullConnectionPool\b", "NullConnectionPool"),
    (r"\bAsyncConnectionPool\b", "ConnectionPool"),
    (r"\bAsyncConnection\b", "Connection"),
    (r"\bAsyncScheduler\b", "Scheduler"),
    (r"\bAsyncPoolUpkeep\b", "PoolUpkeep"),
    (r"\bAsyncConnectFailedCB\b", "ConnectFailedCB"),
    (r"\bAsyncConnectionCB\b", "ConnectionCB"),
    (r"\bAsyncConninfoParam\b", "ConninfoParam"),
    (r"\bAsyncKwargsParam\b", "KwargsParam"),
    (r"\b_AsyncBorrow\b", "_Borrow"),
    (r"\bACT\b", "CT"),
    (r"\bACLIENT_EXCEPTIONS\b", "CLIENT_EXCEPTIONS"),
    (r"\bAEvent\b", "Event"),
    (r"\bAQueue\b", "Queue"),
    (r"\bAWaiter\b", "Waiter"),
    (r"\bAWorker\b", "Worker"),
    (r"\bacheck_running_loop\b", "check_running_loop"),
    (r"\bacurrent_loop\b", "current_loop"),
    (r"\baawait_detached\b", "await_detached"),
    (r"\bacancelling\b", "cancelling"),
    (r"\baensure\b", "ensure"),
    (r"\bagather\b", "gather"),
    (r"\basleep\b", "sleep"),
    (r"\bawait_until\b", "wait_until"),
    (r"\baspawn\b", "spawn"),
    (r"\bpool_async\b", "pool"),
    (r"\bsched_async\b", "sched"),
    (r"\btasks_async\b", "tasks"),
    (r"\bupkeep_async\b", "upkeep"),
    (r"\b_ASYNC = True\b", "_ASYNC = False"),
    (r"Callable\[\[\], Awaitable\[None\]\]", "Callable[[], None]"),
    (r"^from collections\.abc import Awaitable, Callable$", "from collections.abc import Callable"),
]

_COMPILED = [(re.compile(p, re.MULTILINE), r) for p, r in SUBSTITUTIONS]


def target_of(source: str) -> str:
    return source.replace("_async.py", ".py")


#: Lines from "# async only: begin" to "# async only: end" (both included) are left out
#: of the sync twin: code that only an event loop needs costs the thread pool nothing.
_ASYNC_ONLY = re.compile(
    r"^[ \t]*# async only: begin.*?^[ \t]*# async only: end[^\n]*\n", re.MULTILINE | re.DOTALL
)


def convert(text: str, source: str, used: set[str]) -> str:
    text = _ASYNC_ONLY.sub("", text)
    lines = []
    for line in text.splitlines(keepends=True):
        for rx, repl in _COMPILED:
            line, n = rx.subn(repl, line)
            if n:
                used.add(rx.pattern)
        lines.append(line)
    body = "".join(lines)
    header = f"# GENERATED from {Path(source).name} by tools/unasync.py. DO NOT EDIT.\n"
    return ruff_format(header + body, target_of(source))


def ruff_format(text: str, filename: str) -> str:
    """Format generated code as the sources are formatted (removed awaits shorten lines)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", filename, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"unasync: ruff format failed on {filename}: {proc.stderr}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)

    used: set[str] = set()
    stale = []
    for source in SOURCES:
        src = ROOT / source
        dst = ROOT / target_of(source)
        text = convert(src.read_text(), source, used)
        current = dst.read_text() if dst.exists() else None
        if current != text:
            stale.append(dst.relative_to(ROOT))
            if not args.check:
                dst.write_text(text)
    unused = [p for p, _ in SUBSTITUTIONS if p not in used]
    if unused:
        print(f"unasync: substitutions never used (remove them): {unused}", file=sys.stderr)
        return 1
    if stale and args.check:
        names = ", ".join(map(str, stale))
        print(f"unasync: out of date: {names}; run python tools/unasync.py", file=sys.stderr)
        return 1
    for name in stale:
        print(f"unasync: wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
