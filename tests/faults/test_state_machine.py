"""A hypothesis state machine drives both pools with random operations and faults.

Rules: getconn (it may time out), putconn of a clean connection, of one left in a
transaction, in an error state, or closed (broken), resize, drain, check,
pg_terminate_backend of the pool's backends, and switching the pool's ``check``,
``reset`` and ``configure`` callbacks between fast, slow, failing and (for check)
interrupted by a BaseException. After every step the invariants in `invariants.py`
are checked: those true at any instant at once, the others once the pool has come
to rest, and that no counter or histogram bucket of `snapshot()` and `aggregates()`
ever went down, read after every step and from inside every callback call.
`pytest --long` runs 200 examples instead of 12.
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

from .invariants import MonotonicWatch, at_rest, at_rest_violations, instant_violations

pytestmark = [pytest.mark.db, pytest.mark.slow]

APP = "state-machine"
SETTINGS = settings(
    max_examples=12,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class Interrupted(BaseException):
    """Stands in for gevent.Timeout or KeyboardInterrupt inside a check."""


class Callbacks:
    """The pool's check, reset and configure callbacks, switched between behaviours.

    Modes: "ok"; "slow" (20 ms more); "fail" (raises an Exception: check and reset on
    every call, configure on the next call only, so that the pool can refill);
    "interrupt" (check only: the next call raises `Interrupted`). Every call first
    reads the pool's counters into *watch*, so a counter that goes down while a
    callback runs is seen too.
    """

    SLOW = 0.02

    def __init__(self, watch: MonotonicWatch) -> None:
        self.watch = watch
        self.mode = {"check": "ok", "reset": "ok", "configure": "ok"}
        self.pool: Any = None

    def _decide(self, which: str) -> str:
        if self.pool is not None:
            self.watch.read(self.pool, f"in {which}")
        mode = self.mode[which]
        if mode == "interrupt" or (which == "configure" and mode == "fail"):
            self.mode[which] = "ok"  # only the next call
        if mode == "interrupt":
            raise Interrupted(f"{which} interrupted")
        if mode == "fail":
            raise RuntimeError(f"{which} failed on purpose")
        return mode

    def check(self, conn: Any) -> None:
        if self._decide("check") == "slow":
            time.sleep(self.SLOW)
        ConnectionPool.check_connection(conn)

    def reset(self, conn: Any) -> None:
        if self._decide("reset") == "slow":
            time.sleep(self.SLOW)

    def configure(self, conn: Any) -> None:
        if self._decide("configure") == "slow":
            time.sleep(self.SLOW)

    async def acheck(self, conn: Any) -> None:
        if self._decide("check") == "slow":
            await asyncio.sleep(self.SLOW)
        await AsyncConnectionPool.check_connection(conn)

    async def areset(self, conn: Any) -> None:
        if self._decide("reset") == "slow":
            await asyncio.sleep(self.SLOW)

    async def aconfigure(self, conn: Any) -> None:
        if self._decide("configure") == "slow":
            await asyncio.sleep(self.SLOW)


class Driver:
    """Runs pool calls, sync or async, so that one machine serves both pools."""

    def __init__(self, dsn: str, is_async: bool, callbacks: Callbacks | None) -> None:
        """With no *callbacks*, the pool has none, and its fast paths are on."""
        self.is_async = is_async
        options: dict[str, Any] = {
            "kwargs": {"application_name": APP},
            "min_size": 1,
            "max_size": 3,
            "reconnect_timeout": 2.0,  # a failed configure is retried once, soon
        }
        cb = callbacks
        if cb is not None:
            if is_async:
                options.update(check=cb.acheck, reset=cb.areset, configure=cb.aconfigure)
            else:
                options.update(check=cb.check, reset=cb.reset, configure=cb.configure)
        if is_async:
            self.loop = asyncio.new_event_loop()
            self.pool: Any = AsyncConnectionPool(dsn, open=False, name="sm-async", **options)
        else:
            self.pool = ConnectionPool(dsn, open=False, name="sm-sync", **options)
        if cb is not None:
            cb.pool = self.pool  # before open(): configure runs then, and reads the pool
        self.call(self.pool.open(wait=True))

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


class PoolSteps(RuleBasedStateMachine):
    """The steps on the pool as a whole, shared with the fast-path machine."""

    pg: Any
    d: Driver

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


class PoolMachine(PoolSteps):
    dsn: str
    pg: Any
    is_async: bool

    def __init__(self) -> None:
        super().__init__()
        self.watch = MonotonicWatch()
        self.callbacks = Callbacks(self.watch)
        self.d = Driver(self.dsn, self.is_async, self.callbacks)
        self.held: list[Any] = []
        self.requests = 0

    def teardown(self) -> None:
        self.callbacks.mode = dict.fromkeys(self.callbacks.mode, "ok")
        for conn in self.held:
            self.d.call(self.d.pool.putconn(conn))
        self.d.settle()
        failed_already = bool(self.watch.violations)  # and reported by the invariant
        self.d.close()
        self.watch.read(self.d.pool, "after close")
        if not failed_already:
            assert self.watch.violations == []

    @rule(timeout=st.sampled_from([0.0, 0.05, 0.2]))
    def getconn(self, timeout: float) -> None:
        self.requests += 1
        try:
            conn = self.d.call(self.d.pool.getconn(timeout=timeout))
        except (PoolTimeout, Interrupted):
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

    @rule(
        which_mode=st.sampled_from(
            [(w, m) for w in ("check", "reset", "configure") for m in ("ok", "slow", "fail")]
            + [("check", "interrupt")]
        )
    )
    def set_callback(self, which_mode: tuple[str, str]) -> None:
        which, mode = which_mode
        self.callbacks.mode[which] = mode

    @invariant()
    def invariants_hold(self) -> None:
        self.watch.read(self.d.pool, "after the step")
        assert instant_violations(self.d.pool, self.held) == []
        self.d.settle()
        self.watch.read(self.d.pool, "at rest")
        assert self.watch.violations == []
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
