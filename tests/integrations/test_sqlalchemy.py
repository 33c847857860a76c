"""SQLAlchemy 2.x: an engine on a poolwatch pool, and SQLAlchemy's QueuePool instrumented."""

from __future__ import annotations

import time

import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from poolwatch import ConnectionPool
from poolwatch.embedded import free_port
from poolwatch.integrations.sqlalchemy import create_engine, instrument

from ..alerts.stack import Process, prometheus_config, query
from ..dashboards.panels import panel_queries
from ..metrics.scrape import exporter, require_tool, scrape

pytestmark = pytest.mark.db


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "poolwatch_sa_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)


def test_engine_on_a_poolwatch_pool_behaves_like_sqlalchemys_own(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2, close_returns=True, open=True) as pool:
        pool.wait()
        engine = create_engine(pool)
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        try:
            with Session(engine) as session:  # commit
                session.add_all([Item(name="a"), Item(name="b")])
                session.commit()
            assert pool.snapshot().used == 0
            with Session(engine) as session:  # an error rolls back, the connection returns
                session.add(Item(name="a"))
                with pytest.raises(sqlalchemy.exc.IntegrityError):
                    session.commit()
                session.rollback()
                assert session.query(Item).count() == 2
            assert pool.snapshot().used == 0
            with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
                session.add(Item(name="c"))
                raise RuntimeError("the handler failed")
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM poolwatch_sa_items")).scalar() == 2
            snap = pool.snapshot()
            assert snap.used == 0 and snap.idle == snap.size  # always returned, clean
            assert pool.aggregates().acquire["ok"].count >= 5
        finally:
            Base.metadata.drop_all(engine)
            engine.dispose()


def test_create_engine_refuses_a_pool_that_would_not_get_connections_back(dsn):
    with ConnectionPool(dsn, min_size=1, open=True) as pool, pytest.raises(ValueError):
        create_engine(pool)


def sa_url(pg) -> str:
    return f"postgresql+psycopg://poolwatch:{pg.password}@127.0.0.1:{pg.port}/postgres"


def test_queuepool_is_measured_with_poolwatch_names(pg):
    engine = sqlalchemy.create_engine(sa_url(pg), pool_size=2, max_overflow=0, pool_timeout=0.3)
    registry = CollectorRegistry()
    watched = instrument(engine, name="sa-queue", registry=registry)
    n = 10
    for _ in range(n):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    a, b = engine.connect(), engine.connect()
    with pytest.raises(sqlalchemy.exc.TimeoutError):
        engine.connect()  # waits 0.3 s, then times out
    a.invalidate()  # a broken connection
    a.close()
    b.close()
    with exporter([], registry=registry) as srv:
        s = scrape(srv.url)
    labels = {"pool": "sa-queue"}
    assert s.value("poolwatch_acquire_seconds_count", outcome="ok", **labels) == n + 2
    assert s.value("poolwatch_acquire_seconds_count", outcome="timeout", **labels) == 1
    assert s.value("poolwatch_errors_total", kind="timeout", **labels) == 1
    assert s.value("poolwatch_errors_total", kind="broken", **labels) == 1
    assert s.value("poolwatch_waits_total", **labels) >= 1
    assert s.value("poolwatch_connections_max", **labels) == 2
    assert s.value("poolwatch_use_seconds_count", **labels) == n + 2
    assert s.value("poolwatch_connection_lifetime_seconds_count", reason="broken", **labels) == 1
    assert s.value("poolwatch_server_max_connections", **labels) > 0
    assert s.samples("poolwatch_pool_info", **labels)[0][0]["host"] == "127.0.0.1"
    assert pg.password not in s.text
    assert watched.snapshot().used == 0
    engine.dispose()


def test_the_dashboard_queries_work_for_an_instrumented_engine(pg, tmp_path):
    prometheus = require_tool("prometheus")
    engine = sqlalchemy.create_engine(sa_url(pg), pool_size=2, max_overflow=0, pool_timeout=0.2)
    registry = CollectorRegistry()
    instrument(engine, name="sa-dash", registry=registry)
    with exporter([], registry=registry) as srv:
        prom_port = free_port()
        config = prometheus_config(tmp_path / "none.yml", srv.port, free_port())
        config["rule_files"] = []
        import yaml

        (tmp_path / "prom.yml").write_text(yaml.safe_dump(config))
        proc = Process(
            [prometheus, f"--config.file={tmp_path / 'prom.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{prom_port}"
        try:
            proc.wait_http(url + "/-/ready")
            deadline = time.monotonic() + 30
            while not query(url, 'poolwatch_connections_max{pool="sa-dash"}'):
                assert time.monotonic() < deadline, "Prometheus never scraped the engine"
                time.sleep(0.5)
            # some traffic: queries, a wait that times out, a broken connection
            for _ in range(3):
                for _ in range(20):
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                held = [engine.connect(), engine.connect()]
                with pytest.raises(sqlalchemy.exc.TimeoutError):
                    engine.connect()
                held[0].invalidate()
                for c in held:
                    c.close()
                time.sleep(1.5)
            empty = [(t, q) for t, q in panel_queries("15s") if not query(url, q)]
            assert not empty, f"panels without data for the SQLAlchemy engine: {empty}"
        finally:
            proc.stop()
            engine.dispose()
