"""Item 11: the leak report shows the borrower's frames, the timeout message its own queue."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from poolwatch import AsyncConnectionPool, PoolTimeout
from poolwatch.demo.scenarios import Effects

from ..acompat import await_until


async def test_leak_report_keeps_frames_of_code_inside_the_package_that_borrowed(dsn, caplog):
    # The demo lives in poolwatch/demo/: its leak must be reported at the demo's own line,
    # not as a stack of asyncio frames with every poolwatch frame cut out.
    caplog.set_level(logging.WARNING, logger="poolwatch")
    async with AsyncConnectionPool(dsn, min_size=1, leak_timeout=0.1) as pool:
        effects = Effects(pool, None, lambda message: None)
        await effects._leak()
        await await_until(lambda: any("possibly leaked" in r.message for r in caplog.records))
        report = next(r.message for r in caplog.records if "possibly leaked" in r.message)
        await pool.putconn(effects.leaked)
    stack = report.split("taken at:\n", 1)[1]
    assert re.search(r"poolwatch/demo/scenarios\.py\", line \d+, in _leak", stack), stack
    assert "test_leak_report_keeps_frames" in stack  # and the test that called the demo
    # the pool's own machinery is what the report leaves out
    assert "poolwatch/pool/" not in stack and "_acompat.py" not in stack, stack


@pytest.mark.parametrize("others", [0, 1])
async def test_timeout_message_does_not_read_as_nobody_waiting(dsn, others):
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, name="tight") as pool:
        held = await pool.getconn()
        other_waiters = [asyncio.create_task(pool.getconn(timeout=30)) for _ in range(others)]
        await await_until(lambda: pool.snapshot().waiting == others)
        with pytest.raises(PoolTimeout) as exc:
            await pool.getconn(timeout=0.3)
        msg = str(exc.value)
        # The caller waited 0.3 s: a bare "waiting=0" would say that nobody did.
        assert re.search(r"(?<!others )\bwaiting=\d", msg) is None, msg
        assert f"others waiting={others}" in msg, msg
        await pool.putconn(held)
        for task in other_waiters:
            await pool.putconn(await task)
