"""An instrumented SQLAlchemy engine gets the activity split too (not call sites)."""

from __future__ import annotations

import time
from time import monotonic

import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from poolwatch.insight.activity import insight_of, watch
from poolwatch.integrations.sqlalchemy import instrument

from ..integrations.test_sqlalchemy import sa_url

pytestmark = pytest.mark.db


def test_engine_activity_split(pg):
    engine = sqlalchemy.create_engine(sa_url(pg), pool_size=1, max_overflow=0)
    watched = instrument(engine, name="sa-activity", registry=CollectorRegistry())
    try:
        insight = insight_of(watched)
        assert insight is not None  # instrument() registers, and registering watches
        with engine.connect() as conn:
            t0 = monotonic()
            conn.execute(text("SELECT pg_sleep(0.4)"))
            t1 = monotonic()
            time.sleep(0.4)  # SQLAlchemy opened a transaction: idle in it now
            t2 = monotonic()
        time.sleep(0.05)
        totals = insight.totals()
        held = t2 - t0
        assert abs(totals["query"] - (t1 - t0)) / held <= 0.1, totals
        assert abs(totals["idle_in_transaction"] - (t2 - t1)) / held <= 0.1, totals
        with pytest.raises(NotImplementedError):
            watch(watched, call_sites=True)
        assert insight_of(watched) is insight and not insight.call_sites
    finally:
        engine.dispose()
