"""A hypothesis state machine drives both pools with random operations and faults.

Rules: getconn (it may time out), putconn of a clean connection, of one left in a
transaction, in an error state, or closed (broken), resize, drain, check, and
pg_terminate_backend of the pool's backends. After every step the invariants in
`invariants.py` are checked: those true at any instant at once, the others once
the pool has come to rest. `pytest --long` runs 200 examples instead of 12.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolwatch import AsyncConnectionPool, ConnectionPool, PoolTimeout

from .invariants import at_rest, at_rest_violations, instant_violations

pytestmark = [pytest.mark.db, pytest.mark.slow]

APP = "state-machine"
SETTINGS = settings(
    max_examples=12,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Driver:
    """Runs pool calls, sync or async, so that one machine serves both pools."""

    def __init__(self, dsn: str, is_async: bool) -> None:
        self.is_async = is_async
        kwargs = {"application_name": APP}
        if is_async:
            self.loop = asyncio.new_event_loop()
            self.pool: Any = AsyncConnectionPool(
                dsn, min_size=1, max_size=3, kwargs=kwargs, open=False, name="sm-async"
            )
            self.call(self.pool.open(wait=True))
        else:
            self.pool = ConnectionPool(
                dsn, min_size=1, max_size=3, kwargs=kwargs, open=True, name="sm-sync"
            )
            self.pool.wait()

    def call(self, result: Any) -> Any:
        return self.loop.run_until_complete(result) if self.is_async else result

    def settle(self, timeout: float = 10.0) -> None:
        """Let the background workers finish: nothing opening, checking or resetting."""
        deadline = time.monotonic() + timeout
        while not at_rest(self.pool) and time.monotonic() < deadline:
            if self.is_async:
                self.loop.run_until_complete(asyncio.sleep(0.01))
            else:
                time.sleep(0.01)

    def close(self) -> None:
        self.call(self.pool.close())
        if self.is_async:
            self.loop.close()


class PoolMachine(RuleBasedStateMachine):
    dsn: str
    pg: Any
    is_async: bool

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(self.dsn, self.is_async)
        self.held: list[Any] = []
        self.requests = 0

    def teardown(self) -> None:
        for conn in self.held:
            self.d.call(self.d.pool.putconn(conn))
        self.d.close()

    @rule(timeout=st.sampled_from([0.0, 0.05, 0.2]))
    def getconn(self, timeout: float) -> None:
        self.requests += 1
        try:
            conn = self.d.call(self.d.pool.getconn(timeout=timeout))
        except PoolTimeout:
            return
        assert all(conn is not c for c in self.held), "handed out twice"
        self.held.append(conn)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["clean", "in_transaction", "in_error", "broken"]))
    def putconn(self, data: st.DataObject, how: str) -> None:
        conn = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        try:
            if how == "in_transaction":
                self.d.call(conn.execute("SELECT 1"))
            elif how == "in_error":
                try:
                    self.d.call(conn.execute("SELECT 1/0"))
                except psycopg.Error:
                    pass
            elif how == "broken":
                self.d.call(conn.close())
        except psycopg.OperationalError:
            pass  # its backend was killed earlier: it goes back broken
        self.d.call(self.d.pool.putconn(conn))

    @rule(min_size=st.integers(0, 2), extra=st.integers(0, 2))
    def resize(self, min_size: int, extra: int) -> None:
        self.d.call(self.d.pool.resize(min_size, max(1, min_size + extra)))

    @rule()
    def drain(self) -> None:
        self.d.call(self.d.pool.drain())

    @rule()
    def check(self) -> None:
        self.d.call(self.d.pool.check())

    @rule()
    def kill_backends(self) -> None:
        self.pg.terminate_backends(APP)

    @invariant()
    def invariants_hold(self) -> None:
        assert instant_violations(self.d.pool, self.held) == []
        self.d.settle()
        assert at_rest_violations(self.d.pool, self.held, self.requests) == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_pool_state_machine(pg, dsn, is_async, request):
    machine = type(
        f"PoolMachine_{'async' if is_async else 'sync'}",
        (PoolMachine,),
        {"dsn": dsn, "pg": pg, "is_async": is_async},
    )
    test_case = machine.TestCase
    long = request.config.getoption("--long")
    test_case.settings = settings(SETTINGS, max_examples=200 if long else 12)
    test_case().runTest()
