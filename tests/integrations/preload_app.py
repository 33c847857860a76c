"""Apps for the gunicorn --preload test (POOLWATCH_TEST_DSN names the database).

`wrong`: the pool is opened at import, so under --preload the master opens it and
every worker inherits it across fork(). `right`: the documented recipe, the pool
opened in each worker's lifespan.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from poolwatch import AsyncConnectionPool, ConnectionPool, PoolClosed
from poolwatch.exporter import pool_lifespan

DSN = os.environ["POOLWATCH_TEST_DSN"]

inherited = ConnectionPool(DSN, min_size=1, max_size=2, name="inherited", open=True)
wrong = FastAPI()


@wrong.get("/")
def use_inherited() -> dict[str, object]:
    try:
        with inherited.connection() as conn:
            conn.execute("SELECT 1")
        return {"pid": os.getpid(), "error": None}
    except PoolClosed as ex:
        return {"pid": os.getpid(), "error": str(ex)}


per_worker = AsyncConnectionPool(DSN, min_size=1, max_size=2, name="per-worker", open=False)
right = FastAPI(lifespan=pool_lifespan(per_worker))


@right.get("/")
async def use_own() -> dict[str, object]:
    async with per_worker.connection() as conn:
        await conn.execute("SELECT 1")
    return {"pid": os.getpid(), "error": None}
