"""Helpers for users' FastAPI apps: pool lifespan, a connection dependency, a side server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from prometheus_client.registry import CollectorRegistry

from ..metrics.prometheus import register, unregister
from ..pool import AsyncConnectionPool, AsyncNullConnectionPool, ConnectionPool

AnyPool = AsyncConnectionPool[Any] | ConnectionPool[Any]


def pool_lifespan(
    *pools: AnyPool,
    wait: bool = True,
    timeout: float = 30.0,
    registry: CollectorRegistry | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan=`` that opens *pools* at start-up and closes them at shutdown.

    The pools are registered for export with *registry* (prometheus_client's default
    registry unless given; pass the one your exporter serves). With *wait*, start-up blocks
    until each pool has min_size connections (or fails after *timeout* seconds),
    so that a misconfigured DSN stops the app before it takes traffic.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        opened: list[AnyPool] = []
        try:
            for pool in pools:
                register(pool, registry)
                if isinstance(pool, AsyncConnectionPool):
                    await pool.open(wait=wait, timeout=timeout)
                else:
                    await asyncio.to_thread(pool.open, wait=wait, timeout=timeout)
                opened.append(pool)
            yield
        finally:
            for pool in reversed(opened):
                if isinstance(pool, AsyncConnectionPool):
                    await pool.close()
                else:
                    await asyncio.to_thread(pool.close)
                unregister(pool, registry)

    return lifespan


def connection_dependency(pool: AnyPool, *, timeout: float | None = None) -> Callable[..., Any]:
    """A FastAPI dependency that borrows a connection for one request.

    The connection goes back to the pool when the request ends, however it ends:
    the transaction commits if the handler returned, rolls back if it raised
    (``pool.connection()`` semantics)::

        get_conn = connection_dependency(pool)

        @app.get("/items")
        async def items(conn = Depends(get_conn)): ...
    """
    if isinstance(pool, (AsyncConnectionPool, AsyncNullConnectionPool)):
        apool = pool

        async def borrow_async() -> AsyncIterator[Any]:
            async with apool.connection(timeout=timeout) as conn:
                yield conn

        return borrow_async
    spool = pool

    def borrow() -> Iterator[Any]:  # FastAPI runs it in its thread pool
        with spool.connection(timeout=timeout) as conn:
            yield conn

    return borrow


class ExporterThread:
    """A uvicorn server for the exporter app on a daemon thread (see `start_exporter`)."""

    def __init__(
        self, app: Any, host: str, port: int, *, lifespan: Literal["on", "off"] = "off"
    ) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, name="poolwatch-exporter", daemon=True
        )
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the exporter could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_exporter(
    pools: Sequence[Any] = (), *, host: str = "127.0.0.1", port: int = 9187, **options: Any
) -> ExporterThread:
    """Serve the exporter beside the application, on its own port (0 picks a free one).

    Binds 127.0.0.1 unless *host* says otherwise. Returns the running server;
    call ``.stop()`` to shut it down. *options* go to `create_app`.
    """
    from .app import create_app

    server = ExporterThread(create_app(pools, **options), host, port)
    server.start()
    return server
