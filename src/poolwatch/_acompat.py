"""The few primitives that differ between the async pool and its generated sync twin.

`tools/unasync.py` renames every ``A``-prefixed name here to its sync partner, so the
pool's code is written once, against the async names.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from heapq import heapify, heappop, heappush
from inspect import isawaitable
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")

# Exceptions after which the pool must still clean up: in async code a cancelled
# task is as much a failure of the caller as an exception is.
ACLIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (Exception, asyncio.CancelledError)
CLIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (Exception,)

AWorker: TypeAlias = "asyncio.Task[None]"
Worker: TypeAlias = threading.Thread


def _lock_timeout(seconds: float) -> float:
    # threading refuses timeouts above TIMEOUT_MAX (about 292 years) with OverflowError.
    return min(max(0.0, seconds), threading.TIMEOUT_MAX)


def _on_other_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the caller runs outside *loop* (another thread, or another loop)."""
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True


def _call_in_loop(loop: asyncio.AbstractEventLoop, f: Callable[..., Any], *args: Any) -> bool:
    """Run *f* now if we are in *loop*, else hand it to *loop* and wake it up.

    asyncio's objects are not thread-safe: touched from another thread they do not wake
    their loop, which then sees the change only when something else wakes it.
    Returns False if *loop* had ended, checked or found while handing *f* over.
    """
    if not loop.is_closed():
        if not _on_other_loop(loop):
            f(*args)
            return True
        try:
            loop.call_soon_threadsafe(f, *args)
            return True
        except RuntimeError:  # the loop closed in the meantime
            pass
    # A closed loop has nobody left to wake, but the change is kept (a task queued
    # for ended workers is still found by close()); waking one of its futures fails.
    with suppress(RuntimeError):
        f(*args)
    return False


class AEvent(asyncio.Event):
    """An event that may be set from any thread; it belongs to the loop that created it."""

    def __init__(self) -> None:
        super().__init__()
        self._owner_loop = asyncio.get_running_loop()

    def set(self) -> None:
        _call_in_loop(self._owner_loop, super().set)

    async def wait_timeout(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class Event(threading.Event):
    def wait_timeout(self, timeout: float) -> bool:
        return self.wait(_lock_timeout(timeout))


class AQueue(asyncio.Queue[T]):
    """An unbounded queue that may be fed from any thread; read by the loop that created it."""

    def __init__(self) -> None:
        super().__init__()
        self._owner_loop = asyncio.get_running_loop()

    def put_nowait(self, item: T) -> None:
        _call_in_loop(self._owner_loop, super().put_nowait, item)

    def take_all(self) -> list[T]:
        """Remove and return what the queue holds now, without waiting."""
        items = []
        while not self.empty():
            items.append(self.get_nowait())
        return items


class Queue(queue.Queue[T]):
    def take_all(self) -> list[T]:
        items = []
        while True:
            try:
                items.append(self.get_nowait())
            except queue.Empty:
                return items


def acheck_running_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(f"{what} needs a running event loop") from None


def check_running_loop(what: str) -> None:
    pass


def acurrent_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop, if any (a sync pool has none: always None)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_loop() -> Any:
    return None


def acancelling() -> bool:
    """Whether the current task is being cancelled (from outside, not by what it ran).

    Python 3.10 cannot tell: any cancellation then counts as the task's own.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


def cancelling() -> bool:
    return False  # a thread cannot be cancelled


_detached: set[asyncio.Task[Any]] = set()  # strong references until they end


def _forget_detached(task: asyncio.Task[Any]) -> None:
    _detached.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the task's code logs its own failures


async def aawait_detached(f: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Await ``f(*args)`` in a task of its own: cancelling the caller does not wait for it.

    If the caller is cancelled, the task is cancelled too, and the caller's
    CancelledError goes on at once: the task finishes its cleanup in the background
    (psycopg answers a cancellation by cancelling the query on the server and waiting
    up to 5 seconds for it, which the caller must not wait for).
    """
    task = asyncio.get_running_loop().create_task(f(*args))
    _detached.add(task)
    task.add_done_callback(_forget_detached)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


def await_detached(f: Callable[..., T], *args: Any) -> T:
    # A thread cannot be cancelled from outside: the call simply runs in the caller.
    return f(*args)


def aspawn(
    f: Callable[..., Coroutine[Any, Any, None]], args: tuple[Any, ...], name: str
) -> AWorker:
    return asyncio.get_running_loop().create_task(f(*args), name=name)


def spawn(f: Callable[..., None], args: tuple[Any, ...], name: str) -> Worker:
    t = threading.Thread(target=f, args=args, name=name, daemon=True)
    t.start()
    return t


async def agather(workers: list[AWorker], timeout: float) -> list[str]:
    """Wait for *workers* to end; return the names of those still running."""
    if not workers:
        return []
    _, pending = await asyncio.wait(workers, timeout=timeout if timeout > 0 else None)
    return [t.get_name() for t in pending]


def gather(workers: list[Worker], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    for t in workers:
        if t is threading.current_thread():
            continue
        t.join(max(0.0, deadline - time.monotonic()) if timeout > 0 else None)
    return [t.name for t in workers if t.is_alive() and t is not threading.current_thread()]


def asleep(seconds: float) -> Coroutine[Any, Any, None]:
    return asyncio.sleep(seconds)


sleep = time.sleep


async def aensure(f: Callable[..., T | Awaitable[T]], *args: Any) -> T:
    """Call *f*, a sync or async callable, and return its result."""
    rv = f(*args)
    if isawaitable(rv):
        rv = await rv
    return rv  # type: ignore[return-value,unused-ignore]


def ensure(f: Callable[..., T], *args: Any) -> T:
    return f(*args)


class AWaiter:
    """A request queued for a connection.

    `assign`, `fail` and `abandon` are called under the pool lock and settle the
    waiter exactly once; whichever comes first wins. That is what makes a hand-off
    safe against a concurrent timeout or cancellation: a connection given to a
    waiter that has already abandoned is refused and goes to the next one.
    """

    __slots__ = ("_fut", "_loop", "conn", "error", "settled", "started_at")

    def __init__(self, started_at: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._fut: asyncio.Future[None] = self._loop.create_future()
        self.started_at = started_at
        self.conn: Any = None
        self.error: BaseException | None = None
        self.settled = False

    def assign(self, conn: Any) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.conn = conn
        if not self._wake():
            # Its event loop ended while it waited: the request can never take the
            # connection, which the caller gives to the next waiter or keeps idle.
            self.conn = None
            return False
        return True

    def fail(self, error: BaseException) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.error = error
        self._wake()
        return True

    def _wake(self) -> bool:
        """Wake the waiting request; False if its event loop has ended (nobody to wake)."""
        # The waiter's request may run on another event loop (another thread) than the
        # code settling it: its future is then woken through its own loop. The usual
        # case, a hand-off inside the waiter's own loop, wakes it directly.
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # settled from a thread with no event loop
            here = False
        if here:
            fut = self._fut
            if not fut.done():  # _wake_here, inlined
                fut.set_result(None)
            return True
        # False also when the loop closes while the wake-up is handed over to it.
        return _call_in_loop(self._loop, self._wake_here)

    def _wake_here(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def abandon(self) -> bool:
        """Give up waiting; False if the waiter was settled first."""
        if self.settled:
            return False
        self.settled = True
        return True

    async def wait(self, timeout: float) -> None:
        """Return when settled or after *timeout*; the caller then settles under the lock.

        The task awaits the waiter's own future, which its loop's `_Deadlines` resolves
        at the deadline. `asyncio.wait` would do the same with a second future, a done
        callback, a set and a timer per call: on a busy pool most requests come through
        here, and that wrapping cost more than the hand-off itself. A cancellation of the
        task cancels the future: `_wake_here` then leaves it alone, and the caller's
        `abandon()` decides, under the pool lock, whether a connection came first.
        """
        fut = self._fut
        if fut.done():
            return
        deadlines = _deadlines_of(self._loop)
        deadlines.add(self._loop.time() + max(0.0, timeout), fut)
        try:
            await fut
        finally:
            deadlines.live -= 1


class _Deadlines:
    """Every waiter's deadline on one event loop, behind a single timer.

    A timer per waiter (`call_later`) costs a handle, a push on the loop's heap of
    handles (compared in Python) and a cancellation: on a busy pool that was a
    quarter of a hand-off. Here deadlines go on a heap of plain tuples (compared in
    C) and one loop timer stays armed for the earliest. A waiter woken or cancelled
    before its deadline stays on the heap, done, until it comes up or the heap is
    compacted (when it holds over twice the waits still going on).

    Only the loop's own thread touches an instance: `AWaiter.wait` runs in the
    waiter's loop and the timer fires there, so no lock is needed.
    """

    __slots__ = ("_armed_at", "_heap", "_loop", "_order", "_timer", "live")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties on a deadline: first come, first out
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self.live = 0  # waits going on (added, not yet ended)

    def add(self, deadline: float, fut: asyncio.Future[None]) -> None:
        heap = self._heap
        if len(heap) > 2 * self.live + 64:
            heap[:] = [entry for entry in heap if not entry[2].done()]
            heapify(heap)
        heappush(heap, (deadline, next(self._order), fut))
        self.live += 1
        if deadline < self._armed_at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        heap, now = self._heap, self._loop.time()
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            _resolve(heappop(heap)[2])
        if heap:
            # asyncio may run a timer a clock tick early: the next one is then re-armed
            # at the same deadline, and fires once the loop's clock has reached it.
            self._arm(heap[0][0])


_DEADLINES_ATTR = "_poolwatch_deadlines"


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    """The loop's `_Deadlines`, kept on the loop itself so that it lives and dies with it.

    (A registry keyed by loop would keep every loop alive: its timer handle refers to
    the loop.) A loop that takes no attributes gets a fresh instance per wait, which
    is one timer per waiter again: correct, only not cheaper.
    """
    found: _Deadlines | None = getattr(loop, _DEADLINES_ATTR, None)
    if found is None:
        # Only this loop's thread gets here for this loop: no other thread races for it.
        found = _Deadlines(loop)
        with suppress(AttributeError):
            setattr(loop, _DEADLINES_ATTR, found)
    return found


def _resolve(fut: asyncio.Future[None]) -> None:
    """End a waiter's wait at its deadline (it may have been woken or cancelled already)."""
    if not fut.done():
        fut.set_result(None)


class Waiter:
    """The sync twin of `AWaiter`: a pre-acquired lock is the cheapest wake-up signal."""

    __slots__ = ("_signal", "conn", "error", "settled", "started_at")

    def __init__(self, started_at: float) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self.started_at = started_at
        self.conn: Any = None
        self.error: BaseException | None = None
        self.settled = False

    def assign(self, conn: Any) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.conn = conn
        self._signal.release()
        return True

    def fail(self, error: BaseException) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.error = error
        self._signal.release()
        return True

    def abandon(self) -> bool:
        if self.settled:
            return False
        self.settled = True
        return True

    def wait(self, timeout: float) -> None:
        self._signal.acquire(timeout=_lock_timeout(timeout))
