"""poolwatch against psycopg_pool 3.3: same API, and the same observable behaviour.

Each scenario runs once with each library and returns what a user can observe; the
two results must be equal (documented, deliberate differences are left out).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings

import psycopg
import psycopg_pool
import pytest
from psycopg.pq import TransactionStatus

import poolwatch

CLASS_NAMES = [
    "ConnectionPool",
    "AsyncConnectionPool",
    "NullConnectionPool",
    "AsyncNullConnectionPool",
]
ERROR_NAMES = ["PoolTimeout", "PoolClosed", "TooManyRequests"]
EXTRA_PARAMETERS = {"leak_timeout", "observer", "use_lifo", "unknown"}


def test_every_public_name_exists():
    for name in psycopg_pool.__all__:
        assert hasattr(poolwatch, name), name


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_constructor_signature(name):
    theirs = inspect.signature(getattr(psycopg_pool, name)).parameters
    ours = inspect.signature(getattr(poolwatch, name)).parameters
    for pname, p in theirs.items():
        assert pname in ours, f"{name} lacks parameter {pname}"
        q = ours[pname]
        assert (q.kind, q.default) == (p.kind, p.default), f"{name}({pname})"
    assert set(ours) - set(theirs) <= EXTRA_PARAMETERS


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_public_methods_and_signatures(name):
    theirs, ours = getattr(psycopg_pool, name), getattr(poolwatch, name)
    for attr, value in inspect.getmembers(theirs):
        if attr.startswith("_") and attr not in (
            "__enter__",
            "__exit__",
            "__aenter__",
            "__aexit__",
        ):
            continue
        assert hasattr(ours, attr), f"{name}.{attr} is missing"
        if callable(value) and not isinstance(value, type):
            mine = getattr(ours, attr)
            assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(value), attr
            if attr in ("connection",):
                continue  # ours returns a light context manager instead of a generator-based one
            sig_theirs = inspect.signature(value).parameters
            sig_ours = inspect.signature(mine).parameters
            assert [(p.name, p.kind, p.default) for p in sig_theirs.values()] == [
                (p.name, p.kind, p.default) for p in sig_ours.values()
            ], f"{name}.{attr}"


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_exception_hierarchy(name):
    theirs, ours = getattr(psycopg_pool, name), getattr(poolwatch, name)
    assert issubclass(ours, psycopg.OperationalError)
    assert [c for c in theirs.__mro__ if c.__module__.startswith("psycopg.")] == [
        c for c in ours.__mro__ if c.__module__.startswith("psycopg.")
    ]


# --- scenarios: run with each library, compare what users can observe ---

STABLE_STATS = (
    "requests_num",
    "requests_queued",
    "requests_errors",
    "returns_bad",
    "connections_num",
    "connections_errors",
    "connections_lost",
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
)


def stats(pool):
    s = pool.get_stats()
    return {k: s.get(k) for k in STABLE_STATS}


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def scenario_basic_use(mod, dsn, pg):
    with mod.ConnectionPool(dsn, min_size=2, max_size=2, open=True) as pool:
        pool.wait()
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        conn = pool.getconn()
        status_out = conn.pgconn.transaction_status
        owned = conn._pool is pool
        pool.putconn(conn)
        return {
            "stats": stats(pool),
            "status_out": status_out,
            "owned": owned,
            "released": conn._pool is None,
        }


def scenario_timeout(mod, dsn, pg):
    with mod.ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        pool.wait()
        held = pool.getconn()
        try:
            pool.getconn(timeout=0.2)
            error = None
        except Exception as ex:
            error = type(ex).__name__
        pool.putconn(held)
        return {"error": error, "stats": stats(pool)}


def scenario_max_waiting(mod, dsn, pg):
    import threading

    with mod.ConnectionPool(dsn, min_size=1, max_size=1, max_waiting=1, open=True) as pool:
        pool.wait()
        held = pool.getconn()
        t = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
        t.start()
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        try:
            pool.getconn(timeout=1)
            error = None
        except Exception as ex:
            error = type(ex).__name__
        pool.putconn(held)
        t.join(10)
        return {"error": error, "stats": stats(pool)}


def scenario_returned_transaction(mod, dsn, pg, caplog):
    caplog.clear()
    with mod.ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        conn = pool.getconn()
        conn.execute("SELECT 1")
        pool.putconn(conn)
        after_intrans = conn.pgconn.transaction_status
        conn = pool.getconn()
        try:
            conn.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            pass
        pool.putconn(conn)
        after_inerror = conn.pgconn.transaction_status
        warnings_logged = sorted(
            r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING
        )
        return {
            "after_intrans": after_intrans,
            "after_inerror": after_inerror,
            "warnings": warnings_logged,
            "closed": conn.closed,
        }


def scenario_broken_return(mod, dsn, pg):
    with mod.ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        conn = pool.getconn()
        conn.close()
        pool.putconn(conn)
        with pool.connection(timeout=10) as conn2:
            replaced = conn2 is not conn
        return {"replaced": replaced, "stats": stats(pool)}


def scenario_check_after_kill(mod, dsn, pg):
    name = f"compat-{mod.__name__}"
    with mod.ConnectionPool(
        dsn, min_size=2, max_size=2, open=True, kwargs={"application_name": name}
    ) as pool:
        pool.wait()
        killed = pg.terminate_backends(name)
        time.sleep(0.1)
        pool.check()
        wait_for(lambda: pool.get_stats()["pool_available"] == 2)
        return {"killed": killed, "stats": stats(pool)}


def scenario_misuse(mod, dsn, pg):
    out = {}
    with mod.ConnectionPool(dsn, min_size=1, name="a", open=True) as a:
        with mod.ConnectionPool(dsn, min_size=1, name="b", open=True) as b:
            conn = a.getconn()
            try:
                b.putconn(conn)
            except Exception as ex:
                out["foreign"] = (type(ex).__name__, "it comes from pool 'a'" in str(ex))
            a.putconn(conn)
    try:
        a.getconn()
    except Exception as ex:
        out["closed"] = (type(ex).__name__, "closed" in str(ex))
    try:
        a.open()
    except Exception as ex:
        out["reopen"] = type(ex).__name__
    p = mod.ConnectionPool(dsn, open=False)
    try:
        p.getconn()
    except Exception as ex:
        out["not_open"] = (type(ex).__name__, "not open yet" in str(ex))
    return out


def scenario_implicit_open_warning(mod, dsn, pg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = mod.ConnectionPool(dsn, min_size=1)
        with pool.connection(timeout=10):
            pass
        with pool.connection(timeout=10):
            pass
        pool.close()
    return sorted({(w.category.__name__, "'open' parameter" in str(w.message)) for w in caught})


def scenario_callbacks_and_close_returns(mod, dsn, pg):
    calls = []
    with mod.ConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        open=True,
        configure=lambda c: calls.append("configure"),
        reset=lambda c: calls.append("reset"),
        close_returns=True,
    ) as pool:
        conn = pool.getconn()
        conn.close()  # returns it
        wait_for(lambda: pool.get_stats()["pool_available"] == 1)
        still_open = not conn.closed
    return {"calls": calls, "still_open": still_open}


def scenario_null_pool(mod, dsn, pg):
    with mod.NullConnectionPool(dsn, max_size=2, open=True) as pool:
        pids = set()
        for _ in range(3):
            with pool.connection() as conn:
                pids.add(conn.info.backend_pid)
        return {"distinct": len(pids), "stats": stats(pool)}


SCENARIOS = [
    scenario_basic_use,
    scenario_timeout,
    scenario_max_waiting,
    scenario_returned_transaction,
    scenario_broken_return,
    scenario_check_after_kill,
    scenario_misuse,
    scenario_implicit_open_warning,
    scenario_callbacks_and_close_returns,
    scenario_null_pool,
]


@pytest.mark.db
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_same_observable_behaviour(scenario, dsn, pg, caplog):
    caplog.set_level(logging.WARNING)
    kwargs = {"caplog": caplog} if "caplog" in inspect.signature(scenario).parameters else {}
    theirs = scenario(psycopg_pool, dsn, pg, **kwargs)
    ours = scenario(poolwatch, dsn, pg, **kwargs)
    assert ours == theirs
    assert theirs  # the scenario observed something


def test_transaction_status_enum_is_shared():
    assert TransactionStatus.IDLE == 0
