"""Load scenarios for `poolwatch demo`: each one shows a different pool problem.

A scenario sets how many workers run, how long each query holds its connection and
how long a worker pauses between queries, and may do something to the pool or the
server while it runs (leak a connection, restart the server, take it away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("poolwatch.demo")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    #: workers running, as a multiple of --workers
    load: float
    #: seconds each query holds its connection (pg_sleep)
    hold: float
    #: seconds a worker pauses between two queries
    think: float
    #: seconds the worker then waits on a (simulated) external call, its transaction open
    idle: float = 0.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", "light, even traffic: low saturation, no waits", 1, 0.01, 0.05),
        Scenario(
            "spike", "four times the traffic: saturation over 80%, requests queue", 4, 0.02, 0
        ),
        Scenario(
            "slow-queries", "queries take 0.3 s: hold time rises, then waits follow", 2, 0.3, 0.02
        ),
        Scenario("leak", "steady traffic, and one connection is never given back", 1, 0.01, 0.05),
        Scenario("storm", "the server restarts under a full pool: reconnection storm", 4, 0.02, 0),
        Scenario("outage", "the server goes away for 8 s, then comes back", 1, 0.01, 0.05),
        Scenario(
            "held-idle",
            "each transaction stays open across a 0.3 s call to another service:"
            " connections sit idle in transaction while requests queue",
            2,
            0.01,
            0.02,
            idle=0.3,
        ),
    )
}
ORDER = tuple(SCENARIOS)


class Load:
    """Runs workers against *pool* at the level the current scenario asks for."""

    def __init__(self, pool: Any, workers: int) -> None:
        self.pool = pool
        self.base_workers = workers
        self.scenario = SCENARIOS["steady"]
        self.tasks: list[asyncio.Task[None]] = []
        self.queries = 0
        self.failures = 0

    def set(self, scenario: Scenario) -> None:
        self.scenario = scenario
        wanted = max(1, round(self.base_workers * scenario.load))
        while len(self.tasks) < wanted:
            self.tasks.append(asyncio.get_running_loop().create_task(self._worker(len(self.tasks))))
        while len(self.tasks) > wanted:
            self.tasks.pop().cancel()

    async def _worker(self, index: int) -> None:
        while True:
            s = self.scenario
            try:
                async with self.pool.connection() as conn:
                    await conn.execute("SELECT pg_sleep(%s)", (s.hold,))
                    if s.idle:
                        await self._external_call(s.idle)
                self.queries += 1
            except Exception as ex:  # timeouts, or the server went away mid-query
                self.failures += 1
                logger.debug("worker %d: %s", index, ex)
                await asyncio.sleep(0.1)
            # jittered, so that the workers do not march in step
            await asyncio.sleep(s.think * random.uniform(0.5, 1.5))

    @staticmethod
    async def _external_call(seconds: float) -> None:
        """A slow call to another service, made while the transaction is still open."""
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()


class Effects:
    """What a scenario does besides load. *server* is the embedded cluster, if any."""

    def __init__(self, pool: Any, server: Any | None, say: Callable[[str], None]) -> None:
        self.pool = pool
        self.server = server
        self.say = say
        self.leaked: Any | None = None

    async def start(self, scenario: Scenario) -> None:
        action: Callable[[], Awaitable[None]] | None = {
            "leak": self._leak,
            "storm": self._storm,
            "outage": self._outage,
        }.get(scenario.name)
        if action is not None:
            await action()

    async def end(self, scenario: Scenario) -> None:
        if self.leaked is not None:
            conn, self.leaked = self.leaked, None
            with contextlib.suppress(Exception):
                await self.pool.putconn(conn)
            self.say("leak: the leaked connection is given back")

    async def _leak(self) -> None:
        self.leaked = await self.pool.getconn()
        self.say(f"leak: took a connection and kept it (leak_timeout {self.pool.leak_timeout} s)")

    async def _storm(self) -> None:
        if self.server is not None:
            self.say("storm: restarting the server under a full pool")
            await asyncio.to_thread(self.server.restart)
        else:
            self.say("storm: terminating every backend of the pool")
            await self._terminate()

    async def _outage(self) -> None:
        if self.server is not None:
            self.say("outage: stopping the server for 8 s")
            await asyncio.to_thread(self.server.stop)
            await asyncio.sleep(8)
            await asyncio.to_thread(self.server.start)
            self.say("outage: the server is back; the pool reconnects")
        else:
            self.say("outage: terminating the pool's backends for 8 s")
            for _ in range(16):
                await self._terminate()
                await asyncio.sleep(0.5)

    async def _terminate(self) -> None:
        import psycopg

        conninfo = self.pool.conninfo
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (self.pool.kwargs.get("application_name", ""),),
                )
        except Exception as ex:
            self.say(f"could not terminate backends: {type(ex).__name__}")
