"""`poolwatch advise`: the verdict and the right size for a pool, from an exporter or Prometheus.

From an exporter (``poolwatch advise http://127.0.0.1:9187``) it reads `/pools` to
find the pool, then `/pools/{name}/advice`, which the exporter computes from its last
minute of samples. From Prometheus (``--prometheus URL --window 10m``) it computes
the same advice here, from PromQL over the window. Only the standard library is
used: the command works on a plain `pip install poolwatch`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TOKEN_ENV = "POOLWATCH_TOKEN"


class AdviseError(Exception):
    """A problem the user can fix, said in one line, and the exit code it gives."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_advise_parser(commands: Any) -> argparse.ArgumentParser:
    advise = commands.add_parser(
        "advise",
        help="why a pool waits, and what max_size fits its measured load",
        description=(
            "Name the likely cause when requests wait for a pool (too_small, slow_queries,"
            " traffic_spike, held_idle, leak, server_refusing, or none) and predict, for"
            " every max_size from 1 to the server's budget, the wait p50/p95/p99 and the"
            " saturation the measured load would see. The prediction replays the measured"
            " request rate, burstiness and hold-time distribution through a seeded"
            " simulation of the pool's queue. The recommendation is the smallest size"
            " meeting --target-p95, capped by the fleet budget (the server's"
            " max_connections / --instances) and the database's capacity (2 x --cores +"
            " --spindles). Read from a running exporter (its last minute), or with"
            " --prometheus from a Prometheus server over --window."
        ),
        epilog=(
            "examples:\n"
            "  poolwatch advise http://127.0.0.1:8000 --pool demo --cores 8\n"
            "  poolwatch advise --prometheus http://127.0.0.1:9090 --pool api --window 30m\n"
            "exit codes: 0 advice printed, 1 the source could not be read, 2 bad arguments"
            " or an unknown pool"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    advise.add_argument(
        "url",
        nargs="?",
        metavar="EXPORTER_URL",
        help="base URL of a poolwatch exporter (the address of its /pools)",
    )
    advise.add_argument(
        "--prometheus",
        metavar="URL",
        help="read the pool's metrics from this Prometheus instead of an exporter",
    )
    advise.add_argument(
        "--window",
        default="10m",
        help="with --prometheus: the time to measure over, e.g. 90s, 10m, 1h"
        " (default: %(default)s; an exporter always uses its last minute)",
    )
    advise.add_argument(
        "--step",
        default="15s",
        help="with --prometheus: the interval burstiness is measured at, at least the"
        " scrape interval (default: %(default)s)",
    )
    advise.add_argument(
        "--selector",
        default="",
        metavar="MATCHERS",
        help="with --prometheus: extra label matchers, e.g. 'namespace=\"shop\"'",
    )
    advise.add_argument("--pool", help="the pool's name (default: the only pool, if there is one)")
    advise.add_argument(
        "--target-p95",
        type=float,
        default=0.010,
        metavar="SECONDS",
        help="the wait p95 to meet, in seconds (default: %(default)s)",
    )
    advise.add_argument(
        "--cores",
        type=int,
        help="the database server's CPU cores; caps the size at 2 x cores + spindles"
        " (default: unknown, no such cap, and the advice says so)",
    )
    advise.add_argument(
        "--spindles", type=int, default=0, help="the server's disks (default: %(default)s)"
    )
    advise.add_argument(
        "--instances",
        type=int,
        help="app instances sharing the server's connections (default: 1 from an exporter;"
        " the number of instances exporting the pool from Prometheus)",
    )
    advise.add_argument("--json", action="store_true", help="print the advice as JSON")
    advise.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        metavar="VAR",
        help="environment variable holding the exporter's bearer token (default: %(default)s)",
    )
    return advise  # type: ignore[no-any-return]


def run_advise(args: argparse.Namespace) -> int:
    from .advice import advice_parameter_problem, format_advice

    problem = _argument_problem(args) or advice_parameter_problem(
        args.target_p95, args.cores, args.spindles, args.instances or 1
    )
    if problem:
        print(f"poolwatch advise: {problem}", file=sys.stderr)
        return 2
    try:
        data = _from_prometheus(args) if args.prometheus else _from_exporter(args)
    except AdviseError as ex:
        print(f"poolwatch advise: {ex}", file=sys.stderr)
        return ex.code
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(format_advice(data))
    return 0


def _argument_problem(args: argparse.Namespace) -> str | None:
    if bool(args.url) == bool(args.prometheus):
        return "give either an exporter URL or --prometheus URL (one of them)"
    for url in (args.url, args.prometheus):
        if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return f"{url!r} is not an http:// or https:// URL"
    if args.prometheus and not args.pool:
        return "--pool is required with --prometheus"
    return None


def _get_json(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.load(response)
    except urllib.error.HTTPError as ex:
        if ex.code == 401:
            raise AdviseError(f"{url} needs a bearer token: put it in $" + TOKEN_ENV) from None
        raise AdviseError(f"{url} answered HTTP {ex.code}") from None
    except (urllib.error.URLError, OSError) as ex:
        raise AdviseError(f"cannot reach {url}: {getattr(ex, 'reason', ex)}") from None
    except ValueError:
        raise AdviseError(f"{url} did not answer with JSON: is it a poolwatch exporter?") from None


def _from_exporter(args: argparse.Namespace) -> dict[str, Any]:
    base = args.url.rstrip("/")
    token = os.environ.get(args.token_env) or None
    listing = _get_json(f"{base}/pools", token)
    pools = listing.get("pools") if isinstance(listing, dict) else None
    if not isinstance(pools, list):
        raise AdviseError(f"{base}/pools did not list pools: is it a poolwatch exporter?")
    names = [str(p.get("name")) for p in pools if isinstance(p, dict)]
    name = _choose(args.pool, names, base)
    params = {"target_p95": str(args.target_p95), "spindles": str(args.spindles)}
    if args.cores is not None:
        params["cores"] = str(args.cores)
    params["instances"] = str(args.instances or 1)
    address = f"{base}/pools/{urllib.parse.quote(name, safe='')}/advice"
    data: dict[str, Any] = _get_json(f"{address}?{urllib.parse.urlencode(params)}", token)
    return data


def _choose(wanted: str | None, names: list[str], where: str) -> str:
    known = ", ".join(repr(n) for n in sorted(names)) or "none"
    if wanted is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise AdviseError(f"no pool is open at {where} yet", 2)
        raise AdviseError(f"several pools at {where} ({known}): choose one with --pool", 2)
    if wanted not in names:
        raise AdviseError(f"no pool named {wanted!r} at {where} (pools: {known})", 2)
    return wanted


def _from_prometheus(args: argparse.Namespace) -> dict[str, Any]:
    from .advice import Options, advise
    from .prometheus import Client, PrometheusError, parse_duration, window_from_prometheus

    try:
        window_seconds = parse_duration(args.window)
        step = parse_duration(args.step)
    except ValueError as ex:
        raise AdviseError(str(ex), 2) from None
    client = Client(args.prometheus)
    try:
        window, instances = window_from_prometheus(
            client, args.pool, window_seconds, selector=args.selector, step=step
        )
    except PrometheusError as ex:
        raise AdviseError(str(ex), 2 if ex.unknown_pool else 1) from None
    options = Options(args.target_p95, args.cores, args.spindles, args.instances or instances)
    return advise(window, options).to_json()
