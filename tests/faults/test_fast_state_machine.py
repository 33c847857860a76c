"""The state machine again, on a pool whose fast paths are on (no callbacks at all).

`test_state_machine.py` always gives the pool check, reset and configure callbacks,
which turn the inlined fast paths off. Here the pool has none, so getconn/putconn
and `connection()` blocks take them: a block is entered and left as two separate
steps, with other steps in between (the connection may be drained, its backend
killed, the pool resized, or the block's connection given back by hand inside it).
The same invariants are checked after every step, including that no counter,
histogram bucket or used-seconds total ever goes down, and that every request is
counted once (the fast paths keep some counts aside until a reader asks: see
`BasePool._instant` and `BasePool._holds`). Sync blocks run both ways: compiled
(`_hot.c`, the default where it is built) and in Python.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from poolwatch import PoolTimeout

from .invariants import MonotonicWatch, at_rest_violations, instant_violations
from .test_state_machine import SETTINGS, Driver, PoolSteps

pytestmark = [pytest.mark.db, pytest.mark.slow]


class Boom(Exception):
    """Raised inside a block, as application code would."""


class FastPoolMachine(PoolSteps):
    dsn: str
    pg: Any
    is_async: bool
    compiled: bool

    def __init__(self) -> None:
        super().__init__()
        self.watch = MonotonicWatch()
        self.d = Driver(self.dsn, self.is_async, None)
        if not self.is_async:
            # Sync blocks run compiled where _hot is built (it must be, here: see
            # tests/pool/test_compiled_blocks.py), or in Python when the desk is gone.
            assert self.d.pool._desk is not None, "the compiled blocks are not built"
            if not self.compiled:
                self.d.pool._desk = None
        self.held: list[Any] = []  # by getconn
        self.blocks: list[tuple[Any, Any]] = []  # (the open connection() context, its connection)
        self.requests = 0
        self.lent = 0  # requests that got a connection
        self.ended = 0  # lendings ended: by putconn, by a block's exit, by putconn inside a block

    def _all_held(self) -> list[Any]:
        return self.held + [conn for _, conn in self.blocks]

    def _exit(self, block: Any, error: BaseException | None) -> None:
        if self.is_async:
            exit_ = (
                block.__aexit__(type(error), error, None)
                if error
                else block.__aexit__(None, None, None)
            )
            self.d.call(exit_)
        elif error:
            block.__exit__(type(error), error, None)
        else:
            block.__exit__(None, None, None)

    def teardown(self) -> None:
        for conn in self.held:
            self.d.call(self.d.pool.putconn(conn))
        for block, _ in self.blocks:
            self._exit(block, None)
        self.d.settle()
        failed_already = bool(self.watch.violations)
        self.d.close()
        self.watch.read(self.d.pool, "after close")
        if not failed_already:
            assert self.watch.violations == []

    @rule(timeout=st.sampled_from([0.0, 0.05]))
    def getconn(self, timeout: float) -> None:
        self.requests += 1
        try:
            conn = self.d.call(self.d.pool.getconn(timeout=timeout))
        except PoolTimeout:
            return
        assert all(conn is not c for c in self._all_held()), "handed out twice"
        self.lent += 1
        self.held.append(conn)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), how=st.sampled_from(["clean", "in_transaction", "broken"]))
    def putconn(self, data: st.DataObject, how: str) -> None:
        conn = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        try:
            if how == "in_transaction":
                self.d.call(conn.execute("SELECT 1"))
            elif how == "broken":
                self.d.call(conn.close())
        except psycopg.OperationalError:
            pass  # its backend was killed earlier: it goes back broken
        self.d.call(self.d.pool.putconn(conn))
        self.ended += 1

    @rule(timeout=st.sampled_from([0.0, 0.05]))
    def enter_block(self, timeout: float) -> None:
        self.requests += 1
        block = self.d.pool.connection(timeout=timeout)
        try:
            conn = self.d.call(block.__aenter__() if self.is_async else block.__enter__())
        except PoolTimeout:
            return
        assert all(conn is not c for c in self._all_held()), "handed out twice"
        self.lent += 1
        self.blocks.append((block, conn))

    @precondition(lambda self: self.blocks)
    @rule(
        data=st.data(),
        how=st.sampled_from(["clean", "in_transaction", "raises", "broken", "put_back_inside"]),
    )
    def exit_block(self, data: st.DataObject, how: str) -> None:
        block, conn = self.blocks.pop(data.draw(st.integers(0, len(self.blocks) - 1)))
        error: BaseException | None = None
        try:
            if how == "in_transaction":
                self.d.call(conn.execute("SELECT 1"))
            elif how == "raises":
                self.d.call(conn.execute("SELECT 1"))
                error = Boom("the application failed")
            elif how == "broken":
                self.d.call(conn.close())
            elif how == "put_back_inside":
                self.d.call(self.d.pool.putconn(conn))
        except psycopg.OperationalError:
            pass  # its backend was killed earlier
        try:
            self._exit(block, error)
        except psycopg.OperationalError:
            pass  # the commit of a connection whose backend is gone
        except Boom:
            pass  # the block lets the application's error through
        self.ended += 1  # by the exit, or by the putconn inside (the exit then does nothing)

    @invariant()
    def invariants_hold(self) -> None:
        self.watch.read(self.d.pool, "after the step")
        assert instant_violations(self.d.pool, self._all_held()) == []
        self.d.settle()
        self.watch.read(self.d.pool, "at rest")
        assert self.watch.violations == []
        assert at_rest_violations(self.d.pool, self._all_held(), self.requests) == []
        # Every lending counted once when it began and once when it ended, whichever
        # path each took, with nothing left aside for a reader that did not fold it in.
        agg = self.d.pool.aggregates()
        assert agg.acquire["ok"].count == self.lent
        assert agg.use.count == self.ended
        assert self.d.pool.get_stats().get("requests_num", 0) == self.requests


@pytest.mark.parametrize(
    ("is_async", "compiled"),
    [(False, True), (False, False), (True, False)],
    ids=["sync-compiled", "sync-python", "async"],
)
def test_fast_pool_state_machine(pg, dsn, is_async, compiled, request):
    machine = type(
        f"FastPoolMachine_{request.node.callspec.id}",
        (FastPoolMachine,),
        {"dsn": dsn, "pg": pg, "is_async": is_async, "compiled": compiled},
    )
    test_case = machine.TestCase
    long = request.config.getoption("--long")
    test_case.settings = settings(SETTINGS, max_examples=200 if long else 12)
    test_case().runTest()
