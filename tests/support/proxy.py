"""A fault-injecting TCP proxy for network tests.

Sits between clients and a server on 127.0.0.1 and can, at any moment:

* ``pause()`` — stop forwarding in both directions without closing anything
  (a network partition: bytes wait, nobody is told);  ``resume()`` undoes it;
* ``drop = True`` — read and discard everything (a black hole);
* ``latency = 0.05`` — delay every chunk by that many seconds;
* ``await cut()`` — abort every open connection (RST, no close handshake);
* ``refuse = True`` — accept new connections and close them at once.

Works for any TCP protocol (WebSocket, HTTP, Redis)::

    async with FaultProxy("127.0.0.1", server_port) as proxy:
        client = FlagClient(proxy.url, key)
        proxy.pause()
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["FaultProxy"]

_CHUNK = 65536


class _Link:
    """One proxied connection: client side and upstream side."""

    def __init__(
        self, proxy: FaultProxy, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.c_reader, self.c_writer = c_reader, c_writer
        self.u_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(
                self.proxy.target_host, self.proxy.target_port
            )
        except OSError:
            self.c_writer.transport.abort()
            return
        self.u_writer = u_writer
        self.proxy.connect_times.append(time.monotonic())
        self.tasks = [
            asyncio.create_task(self._pump(self.c_reader, u_writer, "up")),
            asyncio.create_task(self._pump(u_reader, self.c_writer, "down")),
        ]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        await self.close(abort=False)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        proxy = self.proxy
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await proxy._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if proxy.latency:
                    await asyncio.sleep(proxy.latency)
                await proxy._flowing.wait()  # a partition that began mid-chunk holds it
                if proxy.drop:
                    continue
                proxy.bytes[direction] += len(data)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()

    async def close(self, *, abort: bool) -> None:
        for writer in (self.c_writer, self.u_writer):
            if writer is None:
                continue
            if abort:
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for task in self.tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``target_host:target_port`` with fault switches.

    Args:
        target_host: where to forward.
        target_port: where to forward.
        port: listen port (0: a free one).
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.latency = 0.0
        self.drop = False
        self.refuse = False
        self.accepted = 0  #: connections accepted so far
        #: ``time.monotonic()`` of each connection forwarded to the target (its
        #: connection rate as the server saw it)
        self.connect_times: list[float] = []
        self.bytes = {"up": 0, "down": 0}
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (clients turn it into ws:// themselves)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        task = asyncio.current_task()
        if task is not None:
            self._link_tasks.add(task)
        try:
            await link.run()
        except asyncio.CancelledError:
            # close() ends links this way; asyncio's stream server would log
            # a cancelled connection callback as an error.
            await link.close(abort=True)
        finally:
            self._links.discard(link)
            if task is not None:
                self._link_tasks.discard(task)

    def pause(self) -> None:
        """Stop forwarding, silently, in both directions (a partition)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again (held bytes flow on)."""
        self._flowing.set()

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    async def cut(self) -> int:
        """Abort every open connection (no close frames, no FIN); returns how many."""
        links = list(self._links)
        for link in links:
            await link.close(abort=True)
        return len(links)

    async def close(self) -> None:
        """Stop listening and abort everything."""
        self.resume()
        if self._server is not None:
            self._server.close()
        await self.cut()
        for task in list(self._link_tasks):
            task.cancel()
        for task in list(self._link_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
