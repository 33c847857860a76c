"""A real PgBouncer in transaction mode between the pool and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from poolwatch import ConnectionPool
from poolwatch.embedded import _server_user, free_port

from ..metrics.scrape import require_tool

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def pgbouncer(pg):
    binary = require_tool("pgbouncer")
    port = free_port()
    # PgBouncer refuses to run as root: give it the server's account and a directory
    # that account can read.
    user = _server_user()
    workdir = Path(tempfile.mkdtemp(prefix="poolwatch-pgbouncer-"))
    (workdir / "userlist.txt").write_text(f'"poolwatch" "{pg.password}"\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"postgres = host=127.0.0.1 port={pg.port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {workdir}/userlist.txt\n"
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 50\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {workdir}/pgbouncer.log\n"
    )
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
        for f in workdir.iterdir():
            os.chown(f, user.pw_uid, user.pw_gid)
    cmd = [binary, str(workdir / "pgbouncer.ini")]
    if user is not None:
        cmd[1:1] = ["-u", user.pw_name]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dsn = f"host=127.0.0.1 port={port} user=poolwatch dbname=postgres password={pg.password}"
    deadline = time.monotonic() + 15
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (workdir / "pgbouncer.log").read_text()
                    if (workdir / "pgbouncer.log").exists()
                    else ""
                )
                pytest.fail(
                    f"pgbouncer did not start: {proc.stdout.read() if proc.stdout else ''} {log}"
                )
            time.sleep(0.2)
    try:
        yield dsn
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_pool_works_through_pgbouncer_in_transaction_mode(pgbouncer, pg):
    # prepare_threshold=None: in transaction mode a session's prepared statements may
    # live on another server connection by the next transaction (PgBouncer 1.18 here
    # has no protocol-level support for them).
    app = "through-pgbouncer"
    errors: list[BaseException] = []
    done = [0]
    with ConnectionPool(
        pgbouncer, min_size=2, max_size=8, open=True, name="bouncer",
        kwargs={"prepare_threshold": None, "application_name": app},
    ) as pool:  # fmt: skip
        pool.wait()

        def worker(i: int) -> None:
            try:
                for j in range(50):  # the same parameterised query, far past the threshold
                    with pool.connection() as conn, conn.transaction():
                        row = conn.execute("SELECT %s::int + %s::int", (i, j)).fetchone()
                        assert row == (i + j,)
                    done[0] += 1
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        snap = pool.snapshot()
        agg = pool.aggregates()
    assert not errors, errors[:3]
    assert done[0] == 300
    assert snap.used == 0
    assert agg.acquire["ok"].count >= 300
    # 8 client connections at most, but PgBouncer ran them over its 2 server connections
    server_side = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND usename = 'poolwatch' AND application_name <> %s AND pid <> pg_backend_pid()",
        (app,),
    )[0][0]
    assert server_side <= 3
