"""A webhook receiver for tests: a real HTTP/1.1 server on a free loopback port.

It records every request (method, path, headers, body) and answers each with
the next status of a script (then 200), so a test can make a receiver fail
first and recover.  ``hold`` makes it wait before answering (a slow receiver).
Built on ``asyncio.start_server``: it runs in the test's event loop, beside
the app under test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["Received", "Receiver", "receiver"]


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes


@dataclass
class Receiver:
    port: int = 0
    script: list[int] = field(default_factory=list)
    hold: float = 0.0
    requests: list[Received] = field(default_factory=list)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(method, path, headers, body))
                if self.hold:
                    await asyncio.sleep(self.hold)
                status = self.script.pop(0) if self.script else 200
                answer = b"ok" if status < 300 else b"receiver failed on purpose"
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.handlers.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def receiver(script: list[int] | None = None, hold: float = 0.0) -> AsyncIterator[Receiver]:
    """A running :class:`Receiver` on a free port of 127.0.0.1."""
    rec = Receiver(script=list(script or []), hold=hold)
    server = await asyncio.start_server(rec._serve, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()
        for task in list(rec.handlers):  # a held answer must not outlive the test
            task.cancel()
        await asyncio.gather(*rec.handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
