"""Bad configuration and misuse: a clear error naming the culprit, and no secret shown."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import psycopg
import pytest

from poolwatch import (
    AsyncConnectionPool,
    ConnectionPool,
    NullConnectionPool,
    PoolClosed,
    PoolConfigError,
    PoolTimeout,
)

CLASSES = [ConnectionPool, AsyncConnectionPool]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"min_size": -1}, "min_size must be >= 0, got -1"),
        ({"min_size": 2, "max_size": -3}, "max_size must be >= 0"),
        ({"min_size": 4, "max_size": 2}, r"max_size \(2\) must be >= min_size \(4\)"),
        ({"min_size": 0, "max_size": 0}, "max_size must be > 0"),
        ({"min_size": "4"}, "min_size must be an integer"),
        ({"min_size": True}, "min_size must be an integer"),
        ({"timeout": -1}, "timeout must be a finite number of seconds > 0"),
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"timeout": "30"}, "timeout must be a number of seconds"),
        ({"max_lifetime": float("inf")}, "max_lifetime must be"),
        ({"max_idle": 0}, "max_idle must be"),
        ({"reconnect_timeout": -5}, "reconnect_timeout must be"),
        ({"max_waiting": -1}, "max_waiting must be >= 0"),
        ({"use_lifo": "yes"}, "use_lifo must be True or False"),
        ({"num_workers": 0}, "num_workers must be >= 1"),
        ({"leak_timeout": 0}, "leak_timeout must be"),
    ],
)
def test_bad_configuration_names_the_argument(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls("", open=False, **kwargs)


@pytest.mark.parametrize("cls", [*CLASSES, NullConnectionPool])
def test_unknown_keyword_suggests_a_fix(cls):
    with pytest.raises(PoolConfigError, match="unknown keyword argument 'max_sise'") as exc:
        cls("", open=False, max_sise=10)
    assert "did you mean 'max_size'" in str(exc.value)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TypeError)


def test_callbacks_must_be_callable():
    with pytest.raises(TypeError, match="configure must be callable"):
        ConnectionPool("", open=False, configure="nope")


def test_conninfo_type():
    with pytest.raises(TypeError, match="conninfo must be a string or a callable"):
        ConnectionPool(42, open=False)


def test_malformed_dsn_never_echoes_the_password():
    secret = "hunter2-very-secret"
    with pytest.raises(ValueError, match="conninfo is not a valid connection string") as exc:
        ConnectionPool(f"host=x password={secret} dbname", open=False)
    assert secret not in str(exc.value) and secret not in repr(exc.value)
    with pytest.raises(ValueError) as exc:
        ConnectionPool(f"postgresql://u:{secret}@h/db?bogus=1", open=False)
    assert secret not in str(exc.value)


@pytest.mark.db
def test_password_appears_nowhere(pg, caplog):
    """Wrong passwords, refused connections, timeouts: grep every output for the secret."""
    caplog.set_level(logging.DEBUG, logger="poolwatch")
    secret = pg.password
    outputs = []
    with ConnectionPool(pg.dsn(), min_size=1, name="secretive") as pool:
        pool.wait()
        outputs += [repr(pool), str(pool.snapshot()), str(pool.get_stats())]
        with pool.connection() as conn:
            outputs.append(repr(conn))
            with pytest.raises(PoolTimeout) as exc:
                pool.getconn(timeout=0.1)
            outputs += [str(exc.value), repr(exc.value)]
    wrong = pg.dsn(password=secret + "-wrong")
    with ConnectionPool(wrong, min_size=1, name="wrong") as pool:
        with pytest.raises(PoolTimeout) as exc:
            pool.getconn(timeout=1.0)
        outputs += [str(exc.value), str(exc.value.__cause__), repr(pool)]
    refused = pg.dsn(port=1)
    with ConnectionPool(refused, min_size=1, name="refused") as pool:
        with pytest.raises(PoolTimeout) as exc:
            pool.getconn(timeout=0.5)
        outputs += [str(exc.value), str(exc.value.__cause__)]
    outputs += [r.getMessage() for r in caplog.records]
    outputs += [r.exc_text or "" for r in caplog.records]
    assert outputs and not [o for o in outputs if secret in o]


@pytest.mark.db
def test_using_a_closed_pool(dsn):
    pool = ConnectionPool(dsn, min_size=1, open=True)
    pool.close()
    with pytest.raises(PoolClosed, match="already closed"):
        pool.getconn()
    with pytest.raises(PoolClosed), pool.connection():
        pass


@pytest.mark.db
def test_implicit_open_warns_on_first_use(dsn):
    pool = ConnectionPool(dsn, min_size=1)  # open not given: opens, and warns on first use
    with pytest.warns(DeprecationWarning, match="'open' parameter will become 'False'"):
        with pool.connection():
            pass
    with pool.connection():  # only once
        pass
    pool.close()


@pytest.mark.db
async def test_async_open_in_constructor_warns(dsn):
    with pytest.warns(RuntimeWarning, match="opening the async pool"):
        pool = AsyncConnectionPool(dsn, min_size=1, open=True)
    await pool.close()


def test_async_pool_needs_a_loop_to_open(dsn):
    with pytest.raises(RuntimeError, match="running event loop"):
        AsyncConnectionPool(dsn, min_size=1)


@pytest.mark.db
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning")
def test_pool_is_disabled_in_a_forked_child(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2, name="forked") as pool:
        pool.wait()
        held = pool.getconn()
        parent_pid = held.info.backend_pid
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what happens, never run pytest's teardown
            code = 0
            try:
                try:
                    pool.getconn()
                    msg = "no error"
                except PoolClosed as ex:
                    msg = str(ex)
                try:
                    pool.putconn(held)
                except PoolClosed as ex:
                    msg += " | " + str(ex)
                os.write(wfd, msg.encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            report = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert f"opened in process {os.getpid()}" in report
        assert "forked child process" in report and "open a new pool in the child" in report
        assert report.count("forked") >= 2  # both getconn and putconn refused
        # The parent's connection survived the child.
        assert held.execute("SELECT pg_backend_pid()").fetchone() == (parent_pid,)
        held.rollback()
        pool.putconn(held)
        with pool.connection() as conn:
            conn.execute("SELECT 1")


def test_public_errors_subclass_operational_error():
    for err in (PoolClosed, PoolTimeout):
        assert issubclass(err, psycopg.OperationalError)
        assert err.__module__ == "poolwatch"
    assert sys.modules["poolwatch"].TooManyRequests.__mro__[1].__name__ == "PoolError"


@pytest.mark.db
def test_huge_timeout_is_accepted(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=1e12) as pool:
        held = pool.getconn()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        got = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn()))  # waits 1e12 s
        waiter.start()
        deadline = time.monotonic() + 5
        while pool.snapshot().waiting != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        pool.putconn(held)
        waiter.join(5)
        assert got == [held]
        pool.putconn(held)


def test_async_pool_is_disabled_in_a_forked_child(dsn):
    import asyncio

    from poolwatch import AsyncConnectionPool

    loop = asyncio.new_event_loop()
    pool = AsyncConnectionPool(dsn, min_size=1, name="forked-async", open=False)
    loop.run_until_complete(pool.open(wait=True))
    try:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what happens, never run pytest's teardown
            code = 0
            try:
                try:
                    loop.run_until_complete(pool.getconn())
                    msg = "no error"
                except PoolClosed as ex:
                    msg = str(ex)
                os.write(wfd, msg.encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            report = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert "forked child process" in report, report

        # the parent's pool is unaffected
        async def use() -> int:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT 1")
                return (await cur.fetchone())[0]

        assert loop.run_until_complete(use()) == 1
    finally:
        loop.run_until_complete(pool.close())
        loop.close()


@pytest.mark.parametrize("where", ["dsn", "kwargs", "callable"])
def test_no_secret_in_errors_or_their_causes(pg, where, caplog):
    """A password from any source never shows in an exception, its causes, or a log."""
    import logging

    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-" + where + "-value"
    dsn = pg.dsn(port=1, password=secret)  # nothing listens on port 1
    options: dict = {"min_size": 1, "reconnect_timeout": 30, "open": True, "name": where}
    if where == "kwargs":
        options["kwargs"] = {"password": secret}
        dsn = pg.dsn(port=1, password=None)
    elif where == "callable":
        dsn_value = dsn
        dsn = lambda: dsn_value  # noqa: E731
    with ConnectionPool(dsn, **options) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=1.5)
        texts = [repr(pool)]
        error: BaseException | None = info.value
        while error is not None:  # the whole chain
            texts += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert len(texts) > 3
    for text in texts:
        assert secret not in text


def test_a_sync_pool_dropped_while_open_stops_its_threads(dsn):
    import gc
    import threading
    import time

    before = threading.active_count()
    pool = ConnectionPool(dsn, min_size=0, max_size=2, num_workers=2, open=True)
    pool.wait()
    assert threading.active_count() == before + 3  # two workers and the scheduler
    del pool
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before:
        assert time.monotonic() < deadline, "the dropped pool's threads are still running"
        time.sleep(0.05)
