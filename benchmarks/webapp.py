"""The web-load benchmark's application: FastAPI, one async pool per uvicorn worker.

Run by `benchmarks/web.py` as ``uvicorn benchmarks.webapp:app --workers N``; the
environment chooses the pool (BENCH_POOL = poolwatch or psycopg_pool), the server
(BENCH_DSN) and the pool size of each worker (BENCH_POOL_SIZE). One endpoint, the
shape of a typical read: borrow a connection, run a query, fetch its row, answer JSON.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI


def _pool_class() -> Any:
    chosen = os.environ.get("BENCH_POOL", "poolwatch")
    if chosen == "poolwatch":
        from poolwatch import AsyncConnectionPool
    elif chosen == "psycopg_pool":
        from psycopg_pool import AsyncConnectionPool
    else:
        raise SystemExit(f"BENCH_POOL must be poolwatch or psycopg_pool, not {chosen!r}")
    return AsyncConnectionPool


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_POOL_SIZE", "4"))
    pool = _pool_class()(
        os.environ["BENCH_DSN"],
        min_size=size,
        max_size=size,
        open=False,
        timeout=30,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/item/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    async with app.state.pool.connection() as conn:
        cur = await conn.execute("SELECT %s::int + 1", (item_id,))
        row = await cur.fetchone()
    return {"id": item_id, "next": row[0]}
