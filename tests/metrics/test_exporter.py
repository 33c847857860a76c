"""The FastAPI exporter over real HTTP: negotiation, gzip, token, readiness, /pools, mounting."""

from __future__ import annotations

import gzip
import logging
import threading

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from poolwatch import AsyncConnectionPool, ConnectionPool
from poolwatch.exporter import (
    ExporterThread,
    connection_dependency,
    create_app,
    create_router,
    pool_lifespan,
)

from ..acompat import wait_until
from .scrape import exporter

pytestmark = pytest.mark.db


@pytest.fixture
def pool(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2, name="exported") as pool:
        pool.wait()
        yield pool


def test_metrics_is_prometheus_text_by_default_and_openmetrics_on_request(pool):
    with exporter([pool]) as srv:
        text = httpx.get(srv.url + "/metrics")
        om = httpx.get(
            srv.url + "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
        )
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE poolwatch_waits_total counter" in text.text
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "# TYPE poolwatch_waits counter" in om.text
    assert om.text.endswith("# EOF\n")


def test_metrics_is_gzipped_when_the_client_accepts_it(pool):
    with exporter([pool]) as srv:
        raw = httpx.get(srv.url + "/metrics", headers={"Accept-Encoding": "identity"})
        with httpx.stream(
            "GET", srv.url + "/metrics", headers={"Accept-Encoding": "gzip"}
        ) as zipped:
            body = b"".join(zipped.iter_raw())
            encoding = zipped.headers.get("content-encoding")
    assert raw.headers.get("content-encoding") is None
    assert encoding == "gzip"
    assert len(body) < len(raw.content) / 3
    assert b"poolwatch_connections_max" in gzip.decompress(body)


def test_bearer_token_guards_metrics_and_pools_but_not_probes(pool):
    token = "s3cret-token-value"
    with exporter([pool], token=token) as srv:
        for path in ("/metrics", "/pools"):
            denied = httpx.get(srv.url + path)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
            assert token not in denied.text
            wrong = httpx.get(srv.url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = httpx.get(srv.url + path, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.get(srv.url + "/readyz").status_code == 200


def test_pools_shows_state_without_secrets(pool, secret):
    with pool.connection():
        with exporter([pool]) as srv:
            r = httpx.get(srv.url + "/pools")
    assert r.status_code == 200
    (view,) = r.json()["pools"]
    assert view["name"] == "exported"
    assert view["connections"] == {"idle": 0, "used": 1, "opening": 0, "max": 2, "min": 1}
    assert view["saturation"] == 0.5
    assert view["server"]["host"] == "127.0.0.1"
    assert secret not in r.text and "password" not in r.text


def test_readyz_is_503_with_a_reason_when_a_pool_is_closed(dsn):
    p = ConnectionPool(dsn, min_size=1, name="closing", open=True)
    p.wait()
    with exporter([p]) as srv:
        assert httpx.get(srv.url + "/readyz").json()["status"] == "ready"
        p.close()
        r = httpx.get(srv.url + "/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "unavailable",
        "pools": {"closing": {"ready": False, "reason": "closed"}},
    }


def test_readyz_is_503_when_the_pool_cannot_connect(pg, secret):
    bad = pg.dsn(port=1)  # nothing listens there
    with ConnectionPool(bad, min_size=1, name="unreachable", reconnect_timeout=30) as p:
        with exporter([p]) as srv:
            wait_until(lambda: p.connect_failing is not None)
            r = httpx.get(srv.url + "/readyz")
    assert r.status_code == 503
    reason = r.json()["pools"]["unreachable"]["reason"]
    assert reason == "cannot connect to the server (SQLSTATE class 08)"
    assert secret not in r.text


def test_readyz_is_503_when_requests_starve(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, name="starved") as p:
        p.wait()
        held = p.getconn()
        waiter = threading.Thread(target=lambda: p.putconn(p.getconn(timeout=5)))
        waiter.start()
        try:
            with exporter([p], ready_max_wait=0.2) as srv:
                wait_until(lambda: p.snapshot().oldest_wait_seconds > 0.25)
                r = httpx.get(srv.url + "/readyz")
        finally:
            p.putconn(held)
            waiter.join(5)
    assert r.status_code == 503
    assert r.json()["pools"]["starved"]["reason"].startswith("exhausted: 1 requests waiting")


def test_readyz_ignores_starvation_unless_asked(dsn):
    # A spike starves every instance at once: failing readiness everywhere would make the
    # load balancer drop the whole service, so by default waiting requests do not count.
    with ConnectionPool(dsn, min_size=1, max_size=1, name="spiked") as p:
        p.wait()
        held = p.getconn()
        waiter = threading.Thread(target=lambda: p.putconn(p.getconn(timeout=10)))
        waiter.start()
        try:
            with exporter([p]) as srv:
                wait_until(lambda: p.snapshot().oldest_wait_seconds > 1.5)
                r = httpx.get(srv.url + "/readyz")
        finally:
            p.putconn(held)
            waiter.join(10)
    assert r.status_code == 200, r.text
    assert r.json()["pools"]["spiked"] == {"ready": True, "reason": None}


def test_the_router_mounts_under_a_prefix_and_the_app_as_a_sub_app(pool):
    registry = CollectorRegistry()
    app = FastAPI()
    app.include_router(create_router([pool], registry=registry), prefix="/ops")
    app.mount("/sub", create_app([pool], registry=registry))

    @app.get("/")
    def home() -> dict[str, str]:
        return {"app": "mine"}

    server = ExporterThread(app, "127.0.0.1", 0)
    server.start()
    try:
        for prefix in ("/ops", "/sub"):
            r = httpx.get(server.url + prefix + "/metrics")
            assert r.status_code == 200 and 'pool="exported"' in r.text
            assert httpx.get(server.url + prefix + "/healthz").json() == {"status": "ok"}
        assert httpx.get(server.url + "/").json() == {"app": "mine"}
    finally:
        server.stop()


def test_lifespan_opens_and_closes_and_the_dependency_always_returns(dsn):
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, name="lifespan", open=False)
    get_conn = connection_dependency(pool)
    app = FastAPI(lifespan=pool_lifespan(pool))

    @app.get("/ok")
    async def ok(conn=Depends(get_conn)) -> dict[str, int]:
        cur = await conn.execute("SELECT 41 + 1")
        return {"answer": (await cur.fetchone())[0]}

    @app.get("/boom")
    async def boom(conn=Depends(get_conn)) -> None:
        await conn.execute("SELECT 1")
        raise RuntimeError("handler failed")

    server = ExporterThread(app, "127.0.0.1", 0, lifespan="on")
    server.start()
    try:
        assert not pool.closed
        assert httpx.get(server.url + "/ok").json() == {"answer": 42}
        r = httpx.get(server.url + "/boom")
        assert r.status_code == 500
        snap = pool.snapshot()
        assert snap.used == 0 and snap.idle == snap.size  # the connection came back
    finally:
        server.stop()
    assert pool.closed


def test_exporter_binds_loopback_by_default(pool):
    with exporter([pool]) as srv:
        assert srv.host == "127.0.0.1"


def test_nothing_secret_in_any_endpoint_or_log(pg, secret, caplog):
    caplog.set_level(logging.DEBUG)
    callable_conninfo = pg.dsn  # a callable conninfo returning a DSN with the password
    pools = [
        ConnectionPool(pg.dsn(), min_size=1, name="in-dsn", open=True),
        ConnectionPool(
            pg.dsn(password=None),
            kwargs={"password": secret},
            min_size=1,
            name="in-kwargs",
            open=True,
        ),
        ConnectionPool(callable_conninfo, min_size=1, name="callable", open=True),
    ]
    try:
        for p in pools:
            p.wait()
            with p.connection() as conn:
                conn.execute("SELECT 1")
        with exporter(pools, token=None) as srv:
            bodies = [
                httpx.get(srv.url + path, headers=headers).text
                for path in ("/metrics", "/pools", "/readyz", "/healthz")
                for headers in ({}, {"Accept": "application/openmetrics-text"})
            ]
            pools[0].close()
            bodies.append(httpx.get(srv.url + "/readyz").text)
        bodies += [repr(p) for p in pools]
    finally:
        for p in pools:
            p.close()
    assert caplog.records, "expected some log records to check"
    logged = [r.getMessage() for r in caplog.records] + [
        str(r.args) for r in caplog.records if r.args
    ]
    for text in bodies + logged:
        assert secret not in text
