"""The FastAPI exporter: /metrics, /healthz, /readyz, /pools, and the status page at /.

`create_router` gives the endpoints to mount into an existing app
(``app.include_router(router, prefix="/ops")``); `create_app` wraps them in an app
of their own, to run beside the application or to mount as a sub-app.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import exposition as prom_exposition
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import REGISTRY, CollectorRegistry

from ..insight.advice import (
    DEFAULT_TARGET_P95,
    Options,
    advice_parameter_problem,
    advise,
    windows_by_pool,
)
from ..insight.checkouts import current_checkouts
from ..insight.verdict import judge
from ..metrics import prometheus as prom
from ..metrics.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_CONTENT_TYPE,
    finish,
    render,
    render_exporter,
)
from ..metrics.multiprocess import read_directory
from ..metrics.multiprocess import readiness as multiprocess_readiness
from ..metrics.profiles import PROFILES, Profile
from ..metrics.state import PoolState, Watchable, bounded
from ..metrics.views import pool_view
from .live import LiveHistory

#: The status page and its script, served by the exporter itself (no CDN, no font downloads).
STATUS_PAGE = (Path(__file__).with_name("status.html")).read_text(encoding="utf-8")
STATUS_SCRIPT = (Path(__file__).with_name("status.js")).read_text(encoding="utf-8")


def _content_security_policy(page: str) -> str:
    """The page's CSP: its own script file only (no inline script), its one style block.

    Pool names and error kinds come from other processes' state files: even if one
    ever reached the DOM as markup, the browser would run none of it.
    """
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL)
    digest = hashlib.sha256((style.group(1) if style else "").encode()).digest()
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "img-src 'self'",
            f"style-src 'sha256-{base64.b64encode(digest).decode()}'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'self'",
        )
    )


STATUS_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": _content_security_policy(STATUS_PAGE),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: Responses smaller than this are sent as they are: gzip would not pay for itself.
GZIP_MIN_BYTES = 1024
#: /readyz ignores waiting requests unless given a limit in seconds: under a traffic spike
#: every instance starves at once, and failing readiness everywhere would make the load
#: balancer drop the whole service (docs/fleet.md, "Readiness and the cascade").
DEFAULT_READY_MAX_WAIT: float | None = None
#: Current checkouts per pool that the status page lists, oldest first.
STATUS_CHECKOUTS = 3
#: Every endpoint answers HEAD like GET, without the body (probes and link checkers use it).
READ_METHODS = ["GET", "HEAD"]


class Exporter:
    """What the endpoints read: the pools of this process and, optionally, a directory."""

    def __init__(
        self,
        pools: Iterable[Watchable] = (),
        *,
        registry: CollectorRegistry | None = None,
        include_registry: bool = True,
        multiproc_dir: str | None = None,
        ready_max_wait: float | None = DEFAULT_READY_MAX_WAIT,
        profile: Profile = "full",
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        self.profile: Profile = profile
        self.collector = prom.collector_for(self.registry)
        for pool in pools:
            prom.register(pool, self.registry)
        self.include_registry = include_registry
        self.multiproc_dir = multiproc_dir
        self.ready_max_wait = ready_max_wait
        self.live = LiveHistory(self.states)

    def states(self) -> list[PoolState]:
        if self.multiproc_dir is not None:
            return read_directory(self.multiproc_dir)
        return self.collector.states()

    def metrics_text(self, openmetrics: bool) -> str:
        text = render(self.states(), openmetrics=openmetrics, profile=self.profile)
        if self.multiproc_dir is not None or self.collector.multiprocess is not None:
            text += render_exporter(prom.exporter_values(), openmetrics=openmetrics)
        if self.include_registry:
            # Everything else the registry holds (process metrics, the app's own);
            # our collector stays quiet meanwhile, its families are already in `text`.
            prom._suppressed.active = True
            try:
                if openmetrics:
                    rest = om_exposition.generate_latest(self.registry).decode()  # type: ignore[no-untyped-call]
                    rest = rest.removesuffix("# EOF\n")
                else:
                    rest = prom_exposition.generate_latest(self.registry).decode()
            finally:
                prom._suppressed.active = False
            text += rest
        return finish(text, openmetrics=openmetrics)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every local pool can hand out a connection, and why not.

        Serving a directory (`poolwatch serve`), the answer comes from the states
        the worker processes wrote there.
        """
        if self.multiproc_dir is not None:
            return multiprocess_readiness(self.states(), self.ready_max_wait)
        pools: dict[str, Any] = {}
        ready = True
        for pool in self.collector.pools():
            reason = self._not_ready_reason(pool)
            pools[pool.name] = {"ready": reason is None, "reason": reason}
            ready = ready and reason is None
        return ready, {"status": "ready" if ready else "unavailable", "pools": pools}

    def _not_ready_reason(self, pool: Watchable) -> str | None:
        snap = pool.snapshot()
        if snap.closed:
            return "closed"
        failing = getattr(pool, "connect_failing", None)
        if snap.idle + snap.used == 0 and failing is not None:
            return f"cannot connect to the server (SQLSTATE class {failing})"
        if (
            self.ready_max_wait is not None
            and snap.waiting
            and snap.oldest_wait_seconds >= self.ready_max_wait
        ):
            return (
                f"exhausted: {snap.waiting} requests waiting, the oldest for"
                f" {snap.oldest_wait_seconds:.1f}s, all {snap.max_size} connections in use"
            )
        return None


def _weighted(header: str) -> list[tuple[str, float]]:
    """The items of an Accept or Accept-Encoding header: (lower-cased token, q).

    Parameters other than q (an OpenMetrics ``version``, say) are dropped; a q that
    is not a number between 0 and 1 counts as 0, as if the item were refused.
    """
    items = []
    for item in header.split(","):
        token, *params = (part.strip() for part in item.split(";"))
        if not token:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        items.append((token.lower(), q))
    return items


def _media_quality(items: list[tuple[str, float]], media: str) -> tuple[float, int] | None:
    """(q, specificity) of the most specific range matching *media*; None if none does.

    Specificity: 2 for the type itself, 1 for ``type/*``, 0 for ``*/*``.
    """
    family = media.partition("/")[0]
    best: tuple[int, float] | None = None
    for token, q in items:
        if token == media:
            rank = 2
        elif token == f"{family}/*":
            rank = 1
        elif token == "*/*":
            rank = 0
        else:
            continue
        if best is None or (rank, q) > best:
            best = (rank, q)
    return None if best is None else (best[1], best[0])


def _wants_openmetrics(request: Request) -> bool | None:
    """True for OpenMetrics, False for the text format, None if the client refuses both.

    OpenMetrics is opt-in: it must be named (a wildcard means the text format) with a
    q above 0 and at least that of the text format. Prometheus lists it first.
    """
    header = request.headers.get("accept", "").strip()
    if not header:
        return False
    items = _weighted(header)
    om = _media_quality(items, "application/openmetrics-text")
    text = _media_quality(items, "text/plain")
    om_q = om[0] if om is not None and om[1] == 2 else 0.0
    if om_q > 0 and om_q >= (text[0] if text is not None else 0.0):
        return True
    if text is not None and text[0] == 0 and om_q == 0:
        return None  # both formats refused outright
    return False


def _accepts_gzip(request: Request) -> bool:
    """Whether gzip is acceptable: named with q > 0, or not named and ``*`` has q > 0."""
    items = _weighted(request.headers.get("accept-encoding", ""))
    named = [q for token, q in items if token in ("gzip", "x-gzip")]
    if named:
        return max(named) > 0
    return any(q > 0 for token, q in items if token == "*")


def _bearer_check(token: str | None) -> Callable[[Request], None]:
    expected = None if token is None else token.encode("utf-8")

    def check(request: Request) -> None:
        if expected is None:
            return
        # Starlette decodes header bytes as Latin-1; encoding back gives the bytes
        # the client sent, which for a non-ASCII token are its UTF-8.
        given = request.headers.get("authorization", "").encode("latin-1")
        scheme, _, value = given.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), expected):
            raise HTTPException(
                status_code=401,
                detail="a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def create_router(
    pools: Sequence[Watchable] = (),
    *,
    token: str | None = None,
    registry: CollectorRegistry | None = None,
    include_registry: bool = True,
    multiproc_dir: str | None = None,
    ready_max_wait: float | None = DEFAULT_READY_MAX_WAIT,
    profile: Profile = "full",
    exporter: Exporter | None = None,
) -> APIRouter:
    """The exporter's endpoints, for ``app.include_router(...)``.

    *pools* are registered with *registry* (prometheus_client's default registry
    unless given); pools registered there by `poolwatch.metrics.register` show too.
    *token*, if set, is required as ``Authorization: Bearer <token>`` on /metrics
    and /pools; /healthz and /readyz stay open for orchestrators' probes.
    *multiproc_dir* serves the states that worker processes write there instead
    of this process's pools. *profile* "lean" exports fewer series per pool
    (`poolwatch.metrics.profiles`). *exporter*, if given, replaces all of these.
    """
    if exporter is None:
        exporter = Exporter(
            pools,
            registry=registry,
            include_registry=include_registry,
            multiproc_dir=multiproc_dir,
            ready_max_wait=ready_max_wait,
            profile=profile,
        )
    ex = exporter
    guarded = [Depends(_bearer_check(token))]
    router = APIRouter()

    @router.api_route("/metrics", methods=READ_METHODS, dependencies=guarded)
    def metrics(request: Request) -> Response:
        openmetrics = _wants_openmetrics(request)
        headers = {"Cache-Control": "no-store", "Vary": "Accept, Accept-Encoding"}
        if openmetrics is None:
            return Response(
                "neither the Prometheus text format nor OpenMetrics is acceptable\n",
                status_code=406,
                media_type="text/plain",
                headers=headers,
            )
        body = ex.metrics_text(openmetrics).encode()
        if _accepts_gzip(request) and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        media = OPENMETRICS_CONTENT_TYPE if openmetrics else PROMETHEUS_CONTENT_TYPE
        return Response(body, media_type=media, headers=headers)

    @router.api_route("/healthz", methods=READ_METHODS)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.api_route("/readyz", methods=READ_METHODS)
    def readyz() -> JSONResponse:
        ready, body = ex.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.api_route("/", methods=READ_METHODS)
    def status_page() -> HTMLResponse:
        return HTMLResponse(STATUS_PAGE, headers=STATUS_PAGE_HEADERS)

    @router.api_route("/status.js", methods=READ_METHODS)
    def status_script() -> Response:
        return Response(
            STATUS_SCRIPT,
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @router.api_route("/api/live", methods=READ_METHODS, dependencies=guarded)
    def live() -> JSONResponse:
        view = ex.live.view()
        add_verdicts(view["pools"], ex)
        return JSONResponse(view, headers={"Cache-Control": "no-store"})

    @router.api_route("/pools", methods=READ_METHODS, dependencies=guarded)
    def pools_view() -> JSONResponse:
        views = [pool_view(s) for s in ex.states()]
        add_verdicts(views, ex)
        return JSONResponse({"pools": views}, headers={"Cache-Control": "no-store"})

    _add_checkouts_route(router, ex, guarded)
    _advice_routes(router, ex, guarded)
    return router


def _add_checkouts_route(router: APIRouter, ex: Exporter, guarded: list[Any]) -> None:
    """GET /pools/{name}/checkouts: who holds the pool now (issue 16, `poolwatch.insight`)."""

    @router.api_route("/pools/{name}/checkouts", methods=READ_METHODS, dependencies=guarded)
    def pool_checkouts(name: str) -> JSONResponse:
        if ex.multiproc_dir is not None:
            # the connections live in the worker processes; only they can read them
            raise HTTPException(
                status_code=404,
                detail="current checkouts are served by each worker's own exporter,"
                " not from a state directory",
            )
        pools = [p for p in ex.collector.pools() if not p.closed and bounded(p.name) == name]
        if not pools:
            raise HTTPException(status_code=404, detail="no open pool of that name")
        body = {"name": name, "checkouts": current_checkouts(pools)}  # type: ignore[arg-type]
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.api_route("/api/checkouts", methods=READ_METHODS, dependencies=guarded)
    def oldest_checkouts() -> JSONResponse:
        # The status page's "oldest checkouts now": every pool in one answer, so that no
        # pool name (which may be hostile) ever goes into a URL the page requests.
        by_name: dict[str, list[Watchable]] = {}
        if ex.multiproc_dir is None:
            for pool in ex.collector.pools():
                if not pool.closed:
                    by_name.setdefault(bounded(pool.name), []).append(pool)
        views = [
            {"name": name, "checkouts": current_checkouts(pools)[:STATUS_CHECKOUTS]}  # type: ignore[arg-type]
            for name, pools in sorted(by_name.items())
        ]
        return JSONResponse({"pools": views}, headers={"Cache-Control": "no-store"})


def add_verdicts(views: list[dict[str, Any]], ex: Exporter) -> None:
    """Give each pool view its "verdict", from the exporter's recent history (issue 16)."""
    windows = windows_by_pool(ex.live, ex.states())
    for view in views:
        window = windows.get(str(view.get("name")))
        if window is not None:
            view["verdict"] = judge(window).to_json()


def _advice_routes(router: APIRouter, ex: Exporter, guarded: list[Any]) -> None:
    """GET /pools/{name}/advice: the verdict and the right size for one pool (issue 16)."""

    @router.api_route("/pools/{name}/advice", methods=READ_METHODS, dependencies=guarded)
    def pool_advice(
        name: str,
        target_p95: float = DEFAULT_TARGET_P95,
        cores: int | None = None,
        spindles: int = 0,
        instances: int = 1,
    ) -> JSONResponse:
        problem = advice_parameter_problem(target_p95, cores, spindles, instances)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        window = windows_by_pool(ex.live, ex.states()).get(name)
        if window is None:
            raise HTTPException(status_code=404, detail="no pool of that name")
        timeout = next(
            (getattr(p, "timeout", None) for p in ex.collector.pools() if p.name == name), None
        )
        options = Options(target_p95, cores, spindles, instances, _number(timeout))
        return JSONResponse(
            advise(window, options).to_json(), headers={"Cache-Control": "no-store"}
        )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def create_app(
    pools: Sequence[Watchable] = (),
    *,
    token: str | None = None,
    registry: CollectorRegistry | None = None,
    include_registry: bool = True,
    multiproc_dir: str | None = None,
    ready_max_wait: float | None = DEFAULT_READY_MAX_WAIT,
    profile: Profile = "full",
    **fastapi_options: Any,
) -> FastAPI:
    """A FastAPI app serving the exporter's endpoints (see `create_router`).

    Run it with uvicorn, or mount it: ``app.mount("/ops", create_app([pool]))``.
    Extra keyword arguments go to `FastAPI` (``lifespan=`` for instance).
    """
    fastapi_options.setdefault("title", "poolwatch exporter")
    fastapi_options.setdefault("docs_url", None)
    fastapi_options.setdefault("redoc_url", None)
    fastapi_options.setdefault("openapi_url", None)
    app = FastAPI(**fastapi_options)
    exporter = Exporter(
        pools,
        registry=registry,
        include_registry=include_registry,
        multiproc_dir=multiproc_dir,
        ready_max_wait=ready_max_wait,
        profile=profile,
    )
    app.state.exporter = exporter  # for code that shares the app's view of the pools
    app.include_router(create_router(token=token, exporter=exporter))
    return app
