"""The ``poolwatch`` command: ``demo``, ``serve``, ``advise``, ``alerts`` and ``dashboards``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PORT = 9187
# the scenario names, without importing the demo (and its dependencies) for --help
_SCENARIOS = ("steady", "spike", "slow-queries", "leak", "storm", "outage", "held-idle")
TOKEN_ENV = "POOLWATCH_TOKEN"

# What each optional extra provides, as the modules a command imports (see pyproject.toml).
EXPORTER_MODULES = ("fastapi", "uvicorn")
YAML_MODULES = ("yaml",)
DASHBOARD_MODULES = ("grafana_foundation_sdk",)
BOARD_FILES = {"pool": "poolwatch.json", "fleet": "poolwatch-fleet.json"}


def _missing_extra(command: str, extra: str, modules: Sequence[str], note: str = "") -> bool:
    """Say which extra *command* needs if one of *modules* is not installed.

    Checked before the command does anything, so that a plain `pip install poolwatch`
    gets one line and exit code 2 instead of a traceback halfway through.
    """
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return False
    print(
        f"poolwatch {command} needs the {extra} extra ({', '.join(absent)} not installed):"
        f" pip install 'poolwatch[{extra}]'{note}",
        file=sys.stderr,
    )
    return True


def _serve(args: argparse.Namespace) -> int:
    if _missing_extra("serve", "exporter", EXPORTER_MODULES):
        return 2
    directory = args.multiproc_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        print(
            "poolwatch serve: no directory to read. Pass --multiproc-dir DIR, or set"
            " PROMETHEUS_MULTIPROC_DIR to the directory your app's workers write to.",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(directory):
        print(f"poolwatch serve: {directory!r} is not a directory", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env) or None
    try:
        import uvicorn

        from .exporter import create_app
        from .metrics.multiprocess_files import directory_warning
    except ImportError as ex:
        print(
            f"poolwatch serve needs the exporter extra ({ex.name} is missing):"
            " pip install 'poolwatch[exporter]'",
            file=sys.stderr,
        )
        return 2
    warning = directory_warning(Path(directory))
    if warning:
        print(f"poolwatch serve: warning: {warning}", file=sys.stderr)
    if args.ready_max_wait is not None and not args.ready_max_wait > 0:
        print("poolwatch serve: --ready-max-wait must be a number of seconds > 0", file=sys.stderr)
        return 2
    from .demo.ports import PortInUse, listen_socket

    try:
        # Claimed before anything is announced: a taken port is one line naming the
        # flag, not "serving ..." followed by uvicorn's bind error.
        sock = listen_socket(args.host, args.port, "--port")
    except (PortInUse, OSError) as ex:
        print(f"poolwatch serve: {ex}", file=sys.stderr)
        return 2
    app = create_app(
        multiproc_dir=directory,
        token=token,
        ready_max_wait=args.ready_max_wait,
        profile=args.profile,
    )
    port = sock.getsockname()[1]  # the one chosen by the system for --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{host}:{port}"
    print(f"poolwatch: serving {where}/metrics and {where}/pools for the pools in {directory}")
    if token:
        print(f"poolwatch: /metrics and /pools need the bearer token from ${args.token_env}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"poolwatch: listening on {args.host}, beyond this machine", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from .alerts.rules import AlertSettings, render_rules
    from .alerts.settings import apply_overrides

    if not args.list and _missing_extra("alerts", "tools", YAML_MODULES):
        return 2  # --list needs no YAML
    from .alerts.kube import render_prometheus_rule

    if args.list:
        defaults = AlertSettings()
        for name in AlertSettings.names():
            print(f"{name} = {getattr(defaults, name)}")
        return 0
    try:
        settings = apply_overrides(AlertSettings(), args.set)
    except ValueError as ex:
        print(f"poolwatch alerts: {ex}", file=sys.stderr)
        return 2
    if args.format == "prometheusrule":
        text, file = render_prometheus_rule(settings), "prometheusrule.yaml"
    else:
        text, file = render_rules(settings), "poolwatch.rules.yml"
    return _write(args.out, file, text)


def _write(out: str, file: str, text: str) -> int:
    if out == "-":
        sys.stdout.write(text)
        return 0
    path = os.path.join(out, file)
    try:
        if os.path.exists(out) and not os.path.isdir(out):
            raise NotADirectoryError(f"{out!r} is a file")
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    except OSError as ex:
        reason = ex.args[0] if isinstance(ex, NotADirectoryError) else ex
        print(
            f"poolwatch: cannot write {path}: {reason} (--out names a directory, or - for stdout)",
            file=sys.stderr,
        )
        return 2
    print(f"poolwatch: wrote {path}")
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    if _missing_extra("dashboards", "tools", DASHBOARD_MODULES, " (Python >= 3.11)"):
        return 2
    if args.format == "configmap" and _missing_extra("dashboards", "tools", YAML_MODULES):
        return 2  # the JSON boards need only the SDK; the ConfigMap is written as YAML
    from .dashboards.build import dashboard_files
    from .dashboards.kube import render_configmap

    files = dashboard_files()
    if args.format == "configmap":
        return _write(args.out, "dashboards-configmap.yaml", render_configmap(files))
    if args.out == "-":
        # One JSON document on stdout: the dashboard --board names (the per-pool one by default).
        board = "poolwatch-fleet.json" if args.board == "fleet" else "poolwatch.json"
        return _write("-", board, files[board])
    for file, text in files.items():
        wanted = args.board == "all" or file == BOARD_FILES[args.board]
        if wanted and _write(args.out, file, text):
            return 2
    return 0


def _demo_dependencies_missing(args: argparse.Namespace) -> bool:
    modules = list(EXPORTER_MODULES)
    if args.with_prometheus:
        modules += YAML_MODULES
    if _missing_extra("demo", "demo", modules):
        return True
    if args.dsn or os.environ.get("POOLWATCH_DSN"):
        return False
    from .embedded import ClusterError, find_bindir

    try:
        find_bindir()  # the machine's PostgreSQL, or the one in the pgserver wheel
    except ClusterError:
        return _missing_extra(
            "demo", "demo", ["pgserver"], ", install PostgreSQL, or pass --dsn to use a running one"
        )
    return False


def _demo(args: argparse.Namespace) -> int:
    if _demo_dependencies_missing(args):
        return 2
    from .demo.runner import DemoOptions, main

    if args.workers < 1 or args.pool_size < 1:
        print("poolwatch demo: --workers and --pool-size must be at least 1", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print("poolwatch demo: --duration must be a positive number of seconds", file=sys.stderr)
        return 2
    options = DemoOptions(
        dsn=args.dsn,
        host=args.host,
        port=args.port,
        scenario=args.scenario,
        duration=args.duration,
        scenario_seconds=args.scenario_seconds,
        workers=args.workers,
        pool_size=args.pool_size,
        with_prometheus=args.with_prometheus,
        prometheus_port=args.prometheus_port,
        alertmanager_port=args.alertmanager_port,
    )
    return main(options)


def _advise(args: argparse.Namespace) -> int:
    from .insight.advise_cli import run_advise

    return run_advise(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolwatch",
        description="Observability-first PostgreSQL connection pool: tools for operators.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="run a pool under load scenarios, with its exporter and status page",
        description=(
            "Start an embedded PostgreSQL (or use --dsn / $POOLWATCH_DSN), open a pool,"
            " serve the exporter and the status page, and drive the pool through named"
            " scenarios: steady, spike, slow-queries, leak, storm, outage, held-idle. Without"
            " --scenario it cycles through all of them. Ctrl-C stops everything and"
            " removes the embedded server."
        ),
    )
    demo.add_argument(
        "--dsn",
        help="use this database instead of an embedded one"
        " (default: $POOLWATCH_DSN, else embedded)",
    )
    demo.add_argument("--scenario", choices=list(_SCENARIOS), help="run only this scenario")
    demo.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--scenario-seconds",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="length of each scenario when cycling (default: %(default)s)",
    )
    demo.add_argument(
        "--workers",
        type=int,
        default=8,
        help="load workers at the steady level (default: %(default)s)",
    )
    demo.add_argument(
        "--pool-size", type=int, default=10, help="the pool's max_size (default: %(default)s)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="exporter address (default: %(default)s)")
    demo.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port of the exporter and status page (default: %(default)s)",
    )
    demo.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run Prometheus and Alertmanager (Debian binaries) with the"
        " bundled rules on loopback, and print alerts as they fire and resolve",
    )
    demo.add_argument(
        "--prometheus-port",
        type=int,
        help="with --with-prometheus: Prometheus' port (default: 9090, or a free port if"
        " 9090 is taken)",
    )
    demo.add_argument(
        "--alertmanager-port",
        type=int,
        help="with --with-prometheus: Alertmanager's port (default: 9093, or a free port if"
        " 9093 is taken)",
    )
    demo.set_defaults(run=_demo)

    serve = commands.add_parser(
        "serve",
        help="serve /metrics for the pools of other processes (multiprocess mode)",
        description=(
            "Run a standalone exporter that reads the state files that your app's worker"
            " processes write when PROMETHEUS_MULTIPROC_DIR is set, and serves /metrics,"
            " /pools, /healthz and /readyz for all of them. It needs no access to the"
            " workers' pids, so it can run in a sidecar container sharing the directory:"
            " a worker counts as live while its file is at most 10 s old. /readyz answers"
            " 503 while no worker has written a live state, or a pool cannot connect (and,"
            " with --ready-max-wait, while a request has waited that long: off by default,"
            " since a traffic spike would fail every pod's readiness at once). To export"
            " the pools of one process, use poolwatch.exporter.start_exporter() or"
            " create_app() instead."
        ),
    )
    serve.add_argument(
        "--multiproc-dir",
        metavar="DIR",
        help="directory the workers write to (default: $PROMETHEUS_MULTIPROC_DIR)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to bind (default: %(default)s)"
    )
    serve.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        metavar="VAR",
        help="environment variable holding a bearer token to require (default: %(default)s;"
        " unset means no token). A variable keeps the token out of `ps` output.",
    )
    serve.add_argument(
        "--ready-max-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="also answer 503 on /readyz while a request has waited this long"
        " (default: off; see docs/fleet.md on the readiness cascade)",
    )
    serve.add_argument(
        "--profile",
        choices=["full", "lean"],
        default="full",
        help="series per pool: full, or lean (fewer buckets and labels, every shipped"
        " alert and panel still works; see docs/fleet.md) (default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: %(default)s)",
    )
    serve.set_defaults(run=_serve)

    from .insight.advise_cli import add_advise_parser

    add_advise_parser(commands).set_defaults(run=_advise)

    alerts = commands.add_parser(
        "alerts",
        help="generate the Prometheus recording and alerting rules",
        description=(
            "Write poolwatch.rules.yml: recording rules (mean saturation, wait p50/p95/p99,"
            " error and connect rates, fleet budget) and every alert of the contract, with"
            " thresholds, windows, for: durations and severities you can change with --set."
        ),
    )
    alerts.add_argument(
        "--out",
        default="alerts",
        metavar="DIR",
        help="directory to write poolwatch.rules.yml to, or - for stdout"
        " (default: alerts/poolwatch.rules.yml under the current directory)",
    )
    alerts.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a setting, e.g. --set saturation_threshold=0.9 --set window=10m",
    )
    alerts.add_argument(
        "--format",
        choices=["rules", "prometheusrule"],
        default="rules",
        help="rules: a Prometheus rule file (poolwatch.rules.yml); prometheusrule: the same"
        " groups in a prometheus-operator PrometheusRule (prometheusrule.yaml)"
        " (default: %(default)s)",
    )
    alerts.add_argument("--list", action="store_true", help="list the settings and defaults")
    alerts.set_defaults(run=_alerts)

    boards = commands.add_parser(
        "dashboards",
        help="generate the Grafana dashboard JSON",
        description=(
            "Write the Grafana dashboards (grafana-foundation-sdk): poolwatch.json, one pool"
            " in detail, and poolwatch-fleet.json, every pool of every instance and cluster."
        ),
    )
    boards.add_argument(
        "--out",
        default="dashboards",
        metavar="DIR",
        help="directory to write to, or - for stdout (default: %(default)s, i.e."
        " dashboards/poolwatch.json and dashboards/poolwatch-fleet.json under the current"
        " directory)",
    )
    boards.add_argument(
        "--format",
        choices=["json", "configmap"],
        default="json",
        help="json: one file per dashboard; configmap: every dashboard in one Kubernetes"
        " ConfigMap labelled for Grafana's dashboard sidecar (dashboards-configmap.yaml)"
        " (default: %(default)s)",
    )
    boards.add_argument(
        "--board",
        choices=["all", "pool", "fleet"],
        default="all",
        help="which dashboard: pool (poolwatch.json), fleet (poolwatch-fleet.json) or all;"
        " with --out - only one is written, the pool one unless fleet is named"
        " (default: %(default)s)",
    )
    boards.set_defaults(run=_dashboards)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
