"""Item 10: repeated pool warnings are rate-limited; single events log as psycopg_pool does.

A connection whose server process was terminated comes back closed: the pool logs
"discarding closed connection" for it. Several at once are an outage in miniature.
"""

from __future__ import annotations

import logging

import psycopg
import pytest

from poolwatch import ConnectionPool

from ..acompat import wait_until

DISCARD = "discarding closed connection"
INTERVAL = 1.5  # seconds; the default is 10, a test need not wait that long


@pytest.fixture
def interval(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("POOLWATCH_WARNING_INTERVAL", str(INTERVAL))
    return INTERVAL


def broken_connections(pool: ConnectionPool, pg, name: str, n: int) -> list[psycopg.Connection]:
    """*n* checked-out connections whose server processes are gone."""
    conns = [pool.getconn() for _ in range(n)]
    assert pg.terminate_backends(name) == n
    for conn in conns:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed
    return conns


def discards(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(DISCARD)]


def test_repeated_warnings_are_one_line_then_a_count(dsn, pg, caplog, interval):
    caplog.set_level(logging.WARNING, logger="poolwatch")
    name = "lograte-repeat"
    kwargs = {"application_name": name}
    with ConnectionPool(dsn, min_size=6, max_size=6, kwargs=kwargs) as pool:
        pool.wait()
        conns = broken_connections(pool, pg, name, 6)
        pool.putconn(conns[0])
        assert len(discards(caplog)) == 1  # the first one at once, as psycopg_pool logs it
        for conn in conns[1:]:
            pool.putconn(conn)
        assert len(discards(caplog)) == 1, [r.getMessage() for r in caplog.records]
        # every event is still counted where the metrics read
        assert pool.get_stats()["returns_bad"] == 6
        assert pool.aggregates().errors[("broken", "")] == 6
        # after the interval, one summary counts the ones that were not logged
        wait_until(lambda: len(discards(caplog)) == 2, timeout=INTERVAL + 30)
        summary = discards(caplog)[1]
        assert summary.levelno == logging.WARNING and summary.name == "poolwatch.pool"
        assert "5 more" in summary.getMessage(), summary.getMessage()
        wait_until(lambda: pool.snapshot().idle == 6, timeout=30)
    # and nothing more: the count was complete
    assert len(discards(caplog)) == 2


def test_single_events_in_different_pools_each_log_at_once(dsn, pg, caplog, interval):
    caplog.set_level(logging.WARNING, logger="poolwatch")
    for i in range(3):
        name = f"lograte-single-{i}"
        with ConnectionPool(dsn, min_size=1, kwargs={"application_name": name}) as pool:
            pool.wait()
            (conn,) = broken_connections(pool, pg, name, 1)
            pool.putconn(conn)
            assert len(discards(caplog)) == i + 1  # one pool's repeats do not hide another's


def test_a_warning_records_the_pools_call_site(dsn, pg, caplog, interval):
    # a handler that shows %(module)s or %(lineno)s should point at the pool, not at the limiter
    caplog.set_level(logging.WARNING, logger="poolwatch")
    name = "lograte-site"
    with ConnectionPool(dsn, min_size=1, kwargs={"application_name": name}) as pool:
        pool.wait()
        (conn,) = broken_connections(pool, pg, name, 1)
        pool.putconn(conn)
    (record,) = discards(caplog)
    assert record.module == "upkeep" and record.funcName == "_reset_connection"


def test_a_pending_count_is_logged_at_exit(tmp_path, dsn):
    # a process that ends inside the interval still reports what it held back
    import subprocess
    import sys

    script = f"""
import logging, psycopg
from poolwatch import ConnectionPool
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with ConnectionPool({dsn!r}, min_size=3, max_size=3) as pool:
    pool.wait()
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        conn.close()  # closed by the application: returned closed
        pool.putconn(conn)
"""
    env = {"POOLWATCH_WARNING_INTERVAL": "600", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    lines = [line for line in out.stderr.splitlines() if line.startswith(DISCARD)]
    assert out.returncode == 0, out.stderr
    assert len(lines) == 2 and "2 more" in lines[1], out.stderr


def test_a_forked_child_does_not_log_its_parents_pending_count(tmp_path, dsn):
    # A pre-fork server forks workers after the parent's pool held some warnings back:
    # that count is the parent's to report, once, not once more per worker at its exit.
    import subprocess
    import sys

    script = f"""
import logging, os, sys
from poolwatch import ConnectionPool
logging.basicConfig(level=logging.WARNING, format="%(process)d %(message)s")
pool = ConnectionPool({dsn!r}, min_size=3, max_size=3, open=True)
pool.wait()
conns = [pool.getconn() for _ in range(3)]
for conn in conns:
    conn.close()
    pool.putconn(conn)
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a worker ending normally: its atexit handlers run
    children.append(pid)
for pid in children:
    assert os.waitpid(pid, 0)[1] == 0
print(os.getpid())
pool.close()
"""
    env = {"POOLWATCH_WARNING_INTERVAL": "600", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    parent = out.stdout.strip()
    summaries = [line for line in out.stderr.splitlines() if "more like it" in line]
    assert len(summaries) == 1, out.stderr
    assert summaries[0].startswith(f"{parent} {DISCARD}") and "2 more" in summaries[0]
