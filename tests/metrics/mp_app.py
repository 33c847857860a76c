"""A FastAPI app for the multiprocess test, run by a real gunicorn with uvicorn workers.

Each worker imports this module after the fork and so builds its own pool; the
pool opens in the worker's lifespan. POOLWATCH_TEST_DSN names the database.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response

from poolwatch import AsyncConnectionPool
from poolwatch.exporter import create_router, pool_lifespan

MAX_SIZE = int(os.environ.get("POOLWATCH_TEST_MAX_SIZE", "3"))

pool = AsyncConnectionPool(
    os.environ["POOLWATCH_TEST_DSN"], min_size=1, max_size=MAX_SIZE, name="mp", open=False
)
app = FastAPI(lifespan=pool_lifespan(pool))
app.include_router(create_router())


@app.middleware("http")
async def tell_pid(request: Request, call_next):  # type: ignore[no-untyped-def]
    response: Response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/work")
async def work(n: int = 1) -> dict[str, int]:
    for _ in range(n):
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
    return {"pid": os.getpid(), "n": n}
