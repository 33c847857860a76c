"""A TCP proxy on loopback that the fault tests control: latency, blackhole, slow connect.

- `latency`: seconds added to every byte, each way (a pipe with latency).
- `blackhole()`: from now on nothing passes, and every open connection is cut at
  the proxy (as a middlebox that drops state would); new connections are accepted
  but never answered, so connecting hangs until the client's own timeout.
- `connect_delay`: seconds before the proxy even dials the server (a slow handshake).
- `heal()`: back to a clean pipe.

It counts the handshakes in flight, to prove that the pool opens few at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.connect_delay = 0.0
        self.blackholed = False
        self.port = 0
        self.connecting = 0
        self.max_connecting = 0
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    # --- control, from the test's thread ---

    def blackhole(self) -> None:
        self.blackholed = True
        self._call(self._cut_all)

    def heal(self) -> None:
        self.blackholed = False
        self.latency = 0.0
        self.connect_delay = 0.0

    def cut_all(self) -> None:
        """Reset every open connection (the server looks gone to each client)."""
        self._call(self._cut_all)

    def _call(self, fn) -> None:  # type: ignore[no-untyped-def]
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    # --- lifecycle ---

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        assert self._ready.wait(10), "the fault proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._cut_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self.blackholed:
            return  # accepted, never answered: the client's connect timeout decides
        self.connecting += 1
        self.max_connecting = max(self.max_connecting, self.connecting)
        try:
            if self.connect_delay:
                await asyncio.sleep(self.connect_delay)
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        finally:
            self.connecting -= 1
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not self.blackholed:
                    writer.write(data)
                    await writer.drain()

        sender = asyncio.get_running_loop().create_task(deliver())
        try:
            while data := await reader.read(65536):
                if not self.blackholed:
                    queue.put_nowait((time.monotonic() + self.latency, data))
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await sender
            with contextlib.suppress(Exception):
                writer.transport.abort()
