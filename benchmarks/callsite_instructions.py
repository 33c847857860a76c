"""CPU instructions per take-and-return, call sites off and on, counted by valgrind.

Wall-clock time on a shared machine moves by a factor of 2 between runs; an
instruction count does not. Each count runs a child Python under
``valgrind --tool=callgrind`` twice, for *N* and for 0 operations, and divides the
difference by *N*: what is left is one operation's instructions, start-up excluded.

Run: ``python -m benchmarks.callsite_instructions --dsn DSN`` (valgrind on PATH).
``--child`` is the measured process, not for direct use.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from typing import Any

import poolwatch
from poolwatch.insight.callsites import SiteFinder

CASES = ("sync getconn+putconn", "sync connection()", "async getconn+putconn", "async connection()")
OPS = 2_000


def child(dsn: str, case: str, sites: bool, ops: int) -> None:
    """Take and give back a connection *ops* times (after a warm-up), as *case* says."""
    site_of = SiteFinder().checkout_site if sites else None
    if case.startswith("sync"):
        pool: Any = poolwatch.ConnectionPool(dsn, min_size=1, max_size=1, open=True)
        pool.wait()
        pool.track_call_sites(site_of)
        for _ in range(200):
            pool.putconn(pool.getconn())
        if case == "sync getconn+putconn":
            for _ in range(ops):
                pool.putconn(pool.getconn())
        else:
            for _ in range(ops):
                with pool.connection():
                    pass
        pool.close()
        return

    async def main() -> None:
        apool: Any = poolwatch.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
        await apool.open()
        await apool.wait()
        apool.track_call_sites(site_of)
        for _ in range(200):
            await apool.putconn(await apool.getconn())
        if case == "async getconn+putconn":
            for _ in range(ops):
                await apool.putconn(await apool.getconn())
        else:
            for _ in range(ops):
                async with apool.connection():
                    pass
        await apool.close()

    asyncio.run(main())


def count(dsn: str, case: str, sites: bool, ops: int) -> int:
    """Instructions the child runs for *ops* operations, start-up included."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += ["-m", "benchmarks.callsite_instructions", "--child", "--dsn", dsn, "--case", case]
    cmd += ["--ops", str(ops)] + (["--sites"] if sites else [])
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {run.stderr[-500:]}")
    return int(found.group(1))


def per_operation(dsn: str, case: str, sites: bool) -> int:
    return (count(dsn, case, sites, OPS) - count(dsn, case, sites, 0)) // OPS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="the server to take connections from")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--sites", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ops", type=int, default=OPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.case, args.sites, args.ops)
        return 0
    print("| case | call sites off | call sites on | extra |\n|---|---:|---:|---:|")
    for case in CASES:
        off, on = per_operation(args.dsn, case, False), per_operation(args.dsn, case, True)
        print(f"| {case} | {off:,} | {on:,} | {on - off:+,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
