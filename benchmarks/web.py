"""A realistic web load: FastAPI under uvicorn with several workers, driven by wrk.

Two servers run at once on loopback, identical except for the pool each uvicorn
worker opens (poolwatch or psycopg_pool, see `webapp`). In every round wrk (the
Debian package, a C load generator that costs little CPU) drives one, then the
other, in alternating order; each run is preceded by a short warm-up. Reported:
requests per second, the ratio to psycopg_pool within the round, and wrk's latency
percentiles (p50, p99), medians over rounds. Any non-2xx answer or socket error is
counted and shown: a run with errors is not a fair comparison.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = {"poolwatch": "poolwatch", "psycopg_pool 3.3": "psycopg_pool"}
BASELINE = "psycopg_pool 3.3"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50 and p99 latency (seconds) and error counts from `wrk --latency`."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"could not read wrk's report:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {
        "rps": float(rps.group(1)),
        "p50": _seconds(p50.group(1)),
        "p99": _seconds(p99.group(1)),
        "errors": float(errors),
    }


class Server:
    """One uvicorn with *workers* processes serving `webapp` on a free loopback port."""

    def __init__(self, pool: str, dsn: str, workers: int, pool_size: int) -> None:
        self.port = _free_port()
        env = dict(os.environ, BENCH_POOL=pool, BENCH_DSN=dsn, BENCH_POOL_SIZE=str(pool_size))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "benchmarks.webapp:app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers), "--log-level", "warning", "--no-access-log",
            ],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}/item/41"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: up when it answers
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn for {pool} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url, timeout=2).json() == {"id": 41, "next": 42}:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"uvicorn for {pool} did not answer within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wrk(url: str, seconds: float, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "--latency", url,
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    return parse_wrk(out.stdout)


def measure(
    dsn: str,
    rounds: int,
    seconds: float,
    *,
    workers: int = 3,
    pool_size: int = 4,
    connections: int = 32,
) -> dict[str, list[dict[str, float]]]:
    """library -> one wrk summary per round."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (Debian package)")
    servers: dict[str, Server] = {}
    out: dict[str, list[dict[str, float]]] = {}
    try:
        for name, module in LIBRARIES.items():
            servers[name] = Server(module, dsn, workers, pool_size)
        names = list(servers)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                wrk(servers[name].url, 1, connections, 2)  # warm-up, not recorded
                out.setdefault(name, []).append(wrk(servers[name].url, seconds, connections, 2))
            print(f"  web: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return out


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| library | requests/s | vs psycopg_pool (median of in-round ratios) | p50 (ms)"
        " | p99 (ms) | p99 vs psycopg_pool | errors (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = results[BASELINE]
    for lib, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base))
        p99_ratio = statistics.median(r["p99"] / b["p99"] for r, b in zip(runs, base))
        lines.append(
            f"| {lib} | {med('rps'):,.0f} | {ratio:.3f} | {med('p50') * 1e3:.2f}"
            f" | {med('p99') * 1e3:.2f} | {p99_ratio:.2f} | {sum(r['errors'] for r in runs):.0f} |"
        )
    return "\n".join(lines)
