"""What differs between the async tests and their generated sync twins."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

IS_ASYNC_TESTS = True


def aspawn(f: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(f(*args))


def spawn(f: Callable[..., Any], *args: Any) -> threading.Thread:
    t = threading.Thread(target=f, args=args, daemon=True)
    t.start()
    return t


async def agather(*tasks: asyncio.Task[Any], timeout: float = 30.0) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), timeout)


def gather(*threads: threading.Thread, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        assert not t.is_alive(), "thread did not finish in time"


asleep = asyncio.sleep
sleep = time.sleep


async def await_until(
    predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(step)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)
