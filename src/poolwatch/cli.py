"""The ``poolwatch`` command: ``poolwatch serve`` (more subcommands join it later)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_PORT = 9187
TOKEN_ENV = "POOLWATCH_TOKEN"


def _serve(args: argparse.Namespace) -> int:
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
    except ImportError as ex:
        print(
            f"poolwatch serve needs the exporter extra ({ex.name} is missing):"
            " pip install 'poolwatch[exporter]'",
            file=sys.stderr,
        )
        return 2
    app = create_app(multiproc_dir=directory, token=token)
    where = f"http://{args.host}:{args.port}"
    print(f"poolwatch: serving {where}/metrics and {where}/pools for the pools in {directory}")
    if token:
        print(f"poolwatch: /metrics and /pools need the bearer token from ${args.token_env}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"poolwatch: listening on {args.host}, beyond this machine", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poolwatch",
        description="Observability-first PostgreSQL connection pool: tools for operators.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="serve /metrics for the pools of other processes (multiprocess mode)",
        description=(
            "Run a standalone exporter that reads the state files that your app's worker"
            " processes write when PROMETHEUS_MULTIPROC_DIR is set, and serves /metrics,"
            " /pools, /healthz and /readyz for all of them. To export the pools of one"
            " process, use poolwatch.exporter.start_exporter() or create_app() instead."
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
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: %(default)s)",
    )
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
