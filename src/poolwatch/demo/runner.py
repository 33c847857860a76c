"""`poolwatch demo`: a pool under named load scenarios, with its exporter and status page.

Everything runs on one event loop: the pool (AsyncConnectionPool), the load workers,
the exporter (uvicorn), the progress line, and optionally Prometheus and
Alertmanager as child processes. Ctrl-C or SIGTERM stops all of it and removes the
embedded server's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ..embedded import ClusterError
from ..pool import AsyncConnectionPool
from .ports import PortInUse, StartError, choose_port, listen_socket
from .scenarios import ORDER, SCENARIOS, Effects, Load, Scenario

APP_NAME = "poolwatch-demo"


@dataclass
class DemoOptions:
    dsn: str | None
    host: str = "127.0.0.1"
    port: int = 8000
    scenario: str | None = None
    duration: float | None = None
    scenario_seconds: float = 30.0
    workers: int = 8
    pool_size: int = 10
    with_prometheus: bool = False
    #: None: 9090 and 9093, or free ports if those are taken
    prometheus_port: int | None = None
    alertmanager_port: int | None = None


class Output:
    """Messages on their own lines, and one progress line rewritten in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.progress_shown = False

    def say(self, message: str) -> None:
        if self.progress_shown and self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        self.stream.flush()
        self.progress_shown = False

    def progress(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.progress_shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def plan(options: DemoOptions) -> Iterator[tuple[Scenario, float]]:
    """(scenario, seconds) in order; endless unless a duration bounds it."""
    names = [options.scenario] if options.scenario else list(ORDER)
    remaining = options.duration
    while remaining is None or remaining > 0:
        for name in names:
            seconds = options.scenario_seconds if len(names) > 1 else (remaining or 3600.0)
            if remaining is not None:
                seconds = min(seconds, remaining)
                remaining -= seconds
            yield SCENARIOS[name], seconds
            if remaining is not None and remaining <= 0:
                return


def progress_line(scenario: Scenario, view: dict[str, Any]) -> str:
    pools = view["pools"]
    if not pools:
        return f"[{scenario.name:<12}] waiting for the pool…"
    p = pools[0]
    p95 = p["wait_p95_seconds"]
    p95_text = "—" if p95 is None else f"{p95 * 1000:.1f} ms"
    errors = p["errors_per_minute"]
    errors_text = "—" if errors is None else f"{errors:.0f}"
    return (
        f"[{scenario.name:<12}] saturation {p['saturation'] * 100:3.0f}%"
        f" | used {p['used']:.0f}/{p['max']:.0f} | waiting {p['waiting']:.0f}"
        f" | wait p95 (1 min) {p95_text} | errors/min {errors_text}"
    )


class Diagnosis:
    """Says the pool's verdict when it changes, and the sizing advice once per scenario.

    Both come from the exporter, as /pools and /pools/demo/advice give them; the demo
    prints them so that the cause is on screen within seconds of the scenario starting.
    """

    #: seconds into a scenario before its advice is printed: a few samples to measure
    ADVICE_AFTER = 5.0
    #: a verdict over less than this is a guess
    MIN_WINDOW = 3.0

    def __init__(self, exporter: Any, base: str, say: Callable[[str], None]) -> None:
        self.exporter = exporter
        self.base = base
        self.say = say
        self.cause: str | None = None
        self.started = time.monotonic()
        self.advised = False
        self.site_said = False

    def new_scenario(self) -> None:
        self.started = time.monotonic()
        self.advised = False
        self.site_said = False

    def update(self) -> None:
        from ..insight.advice import Options, advise, windows_by_pool
        from ..insight.verdict import judge
        from ..metrics.views import pool_view

        states = {s.pool: s for s in self.exporter.states()}
        window = windows_by_pool(self.exporter.live, list(states.values())).get("demo")
        if window is None or window.recent.seconds < self.MIN_WINDOW:
            return
        verdict = judge(window)
        if verdict.cause != self.cause:
            self.cause = verdict.cause
            self.say(f"  verdict: {verdict.cause}: {verdict.why}")
        site = _top_call_site(pool_view(states["demo"]))
        if site and verdict.cause != "none" and not self.site_said:
            self.site_said = True
            self.say(f"  held most by: {site}")
        if not self.advised and time.monotonic() - self.started >= self.ADVICE_AFTER:
            self.advised = True
            advice = advise(window, Options())
            first = advice.notes[0] if advice.notes else ""
            self.say(
                f"  advice: max_size {advice.recommended} for a wait p95 under"
                f" {advice.options.target_p95 * 1000:g} ms (now {window.max_size}). {first}"
                f" Details: {self.base}/pools/demo/advice"
            )


def _watch_what_connections_do(pool: Any) -> None:
    """Turn on the held-time split and call sites (issue 16), where this build has them.

    They come with `poolwatch.insight.activity`, which ships apart from the verdict and
    the advice; without it the demo still shows both, from the queue alone.
    """
    try:
        activity = importlib.import_module("poolwatch.insight.activity")
    except ImportError:
        return
    activity.watch(pool, call_sites=True)


def _top_call_site(view: dict[str, Any]) -> str | None:
    """The call site holding the pool longest, from /pools' "callsites", when measured."""
    sites = view.get("callsites")
    if not isinstance(sites, list) or not sites or not isinstance(sites[0], dict):
        return None
    top = max(sites, key=lambda s: float(s.get("hold_seconds") or 0.0))
    return f"{top.get('site')} ({float(top.get('hold_seconds') or 0.0):.1f} s held)"


class _Server:
    """uvicorn without its own signal handling: the demo owns SIGINT and SIGTERM."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

            def install_signal_handlers(self) -> None:  # older uvicorn
                pass

        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = Quiet(config)
        self.sock = sock

    async def start(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise SystemExit(1)  # uvicorn exits when it cannot bind
            await asyncio.sleep(0.05)
        return task

    def stop(self) -> None:
        self.server.should_exit = True


def _choose_stack_ports(options: DemoOptions, out: Output) -> None:
    """Settle Prometheus' and Alertmanager's ports before anything starts."""
    for attr, default, flag in (
        ("prometheus_port", 9090, "--prometheus-port"),
        ("alertmanager_port", 9093, "--alertmanager-port"),
    ):
        wanted = getattr(options, attr)
        port, note = choose_port(
            "127.0.0.1",
            default if wanted is None else wanted,
            explicit=wanted is not None,
            flag=flag,
        )
        setattr(options, attr, port)
        if note:
            out.say(f"poolwatch demo: {note}")


async def run(options: DemoOptions, out: Output) -> int:
    from prometheus_client import CollectorRegistry

    from ..embedded import create_cluster
    from ..exporter import create_app
    from ..metrics import prometheus as prom

    # Ports first: a taken one is reported before a database is started for nothing.
    sock = listen_socket(options.host, options.port, "--port")
    if options.with_prometheus:
        try:
            _choose_stack_ports(options, out)
        except PortInUse:
            sock.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    cluster = None
    pool: AsyncConnectionPool[Any] | None = None
    server_task: asyncio.Task[None] | None = None
    server: _Server | None = None
    load: Load | None = None
    effects: Effects | None = None
    stack = None
    try:
        # The status page answers while PostgreSQL starts; the pool appears on it when open.
        registry = CollectorRegistry()
        app = create_app([], registry=registry, include_registry=False)
        if options.with_prometheus:
            from .stack import AlertStack

            stack = AlertStack(options, out.say)
            stack.add_webhook(app)
        server = _Server(app, sock)
        server_task = await server.start()
        base = f"http://{options.host}:{options.port}"
        out.say(f"  status page  {base}/")
        out.say(f"  metrics      {base}/metrics")
        out.say(f"  pools        {base}/pools")

        dsn = options.dsn
        if dsn is None:
            out.say("poolwatch demo: starting an embedded PostgreSQL (a temporary directory)…")
            cluster = await asyncio.to_thread(
                create_cluster, max_connections=max(60, options.pool_size * 3)
            )
            dsn = cluster.dsn()
            out.say(
                f"poolwatch demo: PostgreSQL is up on 127.0.0.1:{cluster.port}"
                f" (data in {cluster.basedir})"
            )
        pool = AsyncConnectionPool(
            dsn,
            min_size=max(1, options.pool_size // 2),
            max_size=options.pool_size,
            name="demo",
            timeout=2.0,
            leak_timeout=3.0,
            reconnect_timeout=60.0,
            kwargs={"application_name": APP_NAME},
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        _watch_what_connections_do(pool)
        prom.register(pool, registry)
        out.say("poolwatch demo: the pool 'demo' is open and on the status page")
        if stack is not None:
            await asyncio.to_thread(stack.start)
        out.say("Ctrl-C to stop.")

        load = Load(pool, options.workers)
        effects = Effects(pool, cluster, lambda m: out.say(f"  {m}"))
        exporter_live = app.state.exporter.live
        diagnosis = Diagnosis(app.state.exporter, base, out.say)
        for scenario, seconds in plan(options):
            out.say(f"scenario {scenario.name}: {scenario.description} ({seconds:.0f} s)")
            load.set(scenario)
            effect = loop.create_task(effects.start(scenario))
            diagnosis.new_scenario()
            ends = time.monotonic() + seconds
            while not stop.is_set() and time.monotonic() < ends:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                out.progress(progress_line(scenario, await asyncio.to_thread(exporter_live.view)))
                await asyncio.to_thread(diagnosis.update)
            await _finish(effect)
            await effects.end(scenario)
            if stop.is_set():
                break
        out.say("poolwatch demo: stopping")
        return 0
    finally:
        if load is not None:
            await load.stop()
        if effects is not None and effects.leaked is not None:
            with contextlib.suppress(Exception):
                await pool.putconn(effects.leaked)  # type: ignore[union-attr]
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        if server is not None:
            server.stop()
            if server_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server_task, 10)
        if pool is not None:
            await pool.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.destroy)
            out.say("poolwatch demo: embedded PostgreSQL stopped and removed")
        sock.close()


async def _finish(effect: asyncio.Task[None]) -> None:
    # Effects are bounded (an outage lasts 8 s); let one finish so that a stopped server
    # is always started again, even when its scenario was shorter.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(effect, 60)


def main(options: DemoOptions) -> int:
    out = Output(sys.stdout)
    if options.dsn is None:
        options.dsn = os.environ.get("POOLWATCH_DSN") or None
    try:
        return asyncio.run(run(options, out))
    except PortInUse as ex:
        print(f"poolwatch demo: {ex}", file=sys.stderr)
        return 2
    except (OSError, StartError, ClusterError) as ex:
        print(f"poolwatch demo: {ex}", file=sys.stderr)
        return 1
