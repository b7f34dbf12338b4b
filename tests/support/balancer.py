"""A round-robin load-balancing TCP proxy over several backends, for fault tests.

Like a layer-4 load balancer without health checks: each new connection goes
to the next backend in turn; a backend that refuses the connection is skipped
(the next one is tried), so when a server process dies its clients' reconnects
land on the survivors.  It records, per backend, when each connection was
accepted, so a test can see where clients went and how spread out in time
their reconnects were::

    async with Balancer([("127.0.0.1", p1), ("127.0.0.1", p2)]) as lb:
        client = FlagClient(lb.url, key)
        ...
        lb.accepted_at[1]   # monotonic times of connections sent to backend 1
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from flagwire.core.limits import STREAM_PATH

__all__ = ["Balancer"]

_CHUNK = 65536


class Balancer:
    """Round-robin TCP proxy from ``127.0.0.1:port`` to ``backends``."""

    def __init__(self, backends: list[tuple[str, int]], *, port: int = 0) -> None:
        self.backends = list(backends)
        self.port = port
        self.accepted_at: list[list[float]] = [[] for _ in backends]
        self.failed_at: list[list[float]] = [[] for _ in backends]
        self.open: list[int] = [0 for _ in backends]
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _connect(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            index = self._next % len(self.backends)
            self._next += 1
            host, port = self.backends[index]
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                self.failed_at[index].append(time.monotonic())
                continue
            self.accepted_at[index].append(time.monotonic())
            return index, reader, writer
        return None

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            got = await self._connect()
            if got is None:
                c_writer.transport.abort()
                return
            index, u_reader, u_writer = got
            self.open[index] += 1
            self._writers.update((c_writer, u_writer))
            try:
                pumps = [
                    asyncio.create_task(self._pump(c_reader, u_writer)),
                    asyncio.create_task(self._pump(u_reader, c_writer)),
                ]
                try:
                    await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for p in pumps:
                        p.cancel()
                    for p in pumps:
                        with contextlib.suppress(asyncio.CancelledError):
                            await p
            finally:
                self.open[index] -= 1
                for w in (c_writer, u_writer):
                    self._writers.discard(w)
                    # The other side ended (or died): end ours without a clean close,
                    # as a balancer does when a backend's connection resets.
                    w.transport.abort()
        except asyncio.CancelledError:
            c_writer.transport.abort()
        finally:
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Balancer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
