"""A scripted WebSocket server that speaks (or deliberately mis-speaks) the stream protocol.

For client tests that need exact control of what the server says and when:
malformed frames, gaps, rewinds, refusals.  Each connection is handed to the
test's ``script`` coroutine as a :class:`ScriptedConn`; everything the client
sent is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["ScriptedConn", "ScriptedServer"]


class ScriptedConn:
    """One client connection as the script sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        request = ws.request
        assert request is not None
        parts = urlsplit(request.path)
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.headers = request.headers
        self.received: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, message: Any) -> None:
        """Send a dict (as JSON text), str (text frame) or bytes (binary frame) as is."""
        if isinstance(message, dict):
            await self.ws.send(orjson.dumps(message).decode())
        else:
            await self.ws.send(message)

    async def hello(self, version: int, epoch: str = "e1", env: str = "prod") -> None:
        await self.send(
            {
                "type": "hello",
                "protocol": 1,
                "server": "scripted",
                "env": env,
                "epoch": epoch,
                "version": version,
                "heartbeat": 15,
            }
        )

    async def snapshot(
        self,
        version: int,
        flags: dict[str, Any],
        epoch: str = "e1",
        env: str = "prod",
        segments: dict[str, Any] | None = None,
    ) -> None:
        await self.send(
            {
                "type": "snapshot",
                "env": env,
                "epoch": epoch,
                "version": version,
                "flags": flags,
                "segments": segments or {},
            }
        )

    async def patch(self, data: dict[str, Any], version: int, kind: str = "flag") -> None:
        await self.send(
            {"type": "patch", "kind": kind, "key": data["key"], "data": data, "version": version}
        )

    async def expect(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next message the client sends of ``type_`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._inbox.get()
                if msg.get("type") == type_:
                    return msg

    async def pump(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                msg = orjson.loads(raw)
                self.received.append(msg)
                self._inbox.put_nowait(msg)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()


Script = Callable[[ScriptedConn], Awaitable[None]]


class ScriptedServer:
    """``async with ScriptedServer(script) as server``: ``server.url`` for the client.

    Args:
        script: run for each connection; when it returns the connection is
            held open until the client goes (so a script can just say its piece).
        reject: an HTTP status to answer every handshake with (e.g. 401).
        reject_detail: the problem body's ``detail`` in that answer.
        reject_code: the problem body's ``code`` (none by default).
        reject_headers: extra headers of that answer (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        script: Script,
        *,
        reject: int | None = None,
        reject_detail: str = "unknown or revoked SDK key",
        reject_code: str | None = None,
        reject_headers: dict[str, str] | None = None,
    ) -> None:
        self.script = script
        self.reject = reject
        self.reject_detail = reject_detail
        self.reject_code = reject_code
        self.reject_headers = dict(reject_headers or {})
        self.handshake_times: list[float] = []  #: loop time of each handshake
        self.connections: list[ScriptedConn] = []
        self.handshakes = 0
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self.handshake_times.append(asyncio.get_running_loop().time())
        if self.reject is not None:
            problem: dict[str, Any] = {
                "title": "Unauthorized",
                "status": self.reject,
                "detail": self.reject_detail,
            }
            if self.reject_code is not None:
                problem["code"] = self.reject_code
            response = ws.respond(self.reject, orjson.dumps(problem).decode())
            del response.headers["Content-Type"]  # Headers is a multidict: set appends
            response.headers["Content-Type"] = "application/problem+json"
            for name, value in self.reject_headers.items():
                response.headers[name] = value
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = ScriptedConn(ws)
        self.connections.append(conn)
        pump = asyncio.create_task(conn.pump())
        try:
            await self.script(conn)
            await ws.wait_closed()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def __aenter__(self) -> ScriptedServer:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, compression=None, process_request=self._process_request
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_connections(self, n: int, within: float = 10.0) -> ScriptedConn:
        """The ``n``-th connection, once it has been made."""
        async with asyncio.timeout(within):
            while len(self.connections) < n:  # noqa: ASYNC110 - polling a plain list
                await asyncio.sleep(0.01)
        return self.connections[n - 1]
