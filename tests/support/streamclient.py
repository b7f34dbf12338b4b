"""A minimal raw flagwire stream client for server tests (not the real client).

It speaks the protocol directly with ``websockets`` so that server tests see
exactly what the server sends: it records every message, keeps the flags it
was given, checks that versions rise by one, and acks each version it applies.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection

from flagwire.core.limits import MAX_SERVER_FRAME
from flagwire.core.protocol import (
    Ack,
    Delete,
    Hello,
    Patch,
    Resync,
    SnapshotMessage,
    decode,
    encode,
)
from tests.support.polling import poll

__all__ = ["StreamClient", "connect_raw", "wait_until"]


async def wait_until(
    predicate: Any, within: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """:func:`tests.support.polling.poll`, in this module's argument order."""
    await poll(predicate, within, what, interval)


async def connect_raw(
    ws_url: str,
    key: str | None,
    *,
    query: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> ClientConnection:
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    url = ws_url + ("?" + urlencode(query) if query else "")
    kwargs.setdefault("compression", None)
    kwargs.setdefault("max_size", MAX_SERVER_FRAME)
    kwargs.setdefault("open_timeout", 10)
    return await websockets.connect(url, additional_headers=all_headers, **kwargs)


class StreamClient:
    """Connects, applies hello/snapshot/patch/delete, acks, and remembers everything."""

    def __init__(
        self,
        ws_url: str,
        key: str,
        *,
        env: str | None = None,
        ack: bool = True,
        resync_on_gap: bool = True,
    ) -> None:
        self.ws_url = ws_url
        self.key = key
        self.env = env
        self.ack = ack
        self.resync_on_gap = resync_on_gap
        self.ws: ClientConnection | None = None
        self.epoch = ""
        self.version = 0
        self.flags: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        self.messages: list[Any] = []
        self.gaps: list[tuple[int, int]] = []
        self.hello: Hello | None = None
        self.hello_at = 0  # index of the latest hello in messages
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._task: asyncio.Task[None] | None = None

    async def connect(self, *, since: int | None = None, epoch: str | None = None) -> StreamClient:
        query: dict[str, Any] = {}
        if self.env:
            query["env"] = self.env
        if since is not None:
            query["since"] = since
            query["epoch"] = epoch if epoch is not None else self.epoch
        self.ws = await connect_raw(self.ws_url, self.key, query=query)
        self.close_code = None
        first = decode(await asyncio.wait_for(self.ws.recv(), 10))
        assert isinstance(first, Hello), first
        self.hello = first
        self.hello_at = len(self.messages)
        self.messages.append(first)
        if since is None:
            self.version = -1  # a snapshot must come
        self._task = asyncio.create_task(self._run())
        return self

    async def resume(self) -> StreamClient:
        """Reconnect with ``since`` = the version held."""
        await self.close()
        return await self.connect(since=self.version, epoch=self.epoch)

    async def _run(self) -> None:
        assert self.ws is not None
        ws = self.ws
        try:
            async for raw in ws:
                msg = decode(raw)
                self.messages.append(msg)
                if isinstance(msg, SnapshotMessage):
                    self.flags, self.segments = dict(msg.flags), dict(msg.segments)
                    self.version, self.epoch = msg.version, msg.epoch
                elif isinstance(msg, Patch | Delete):
                    if msg.version <= self.version:
                        continue
                    if msg.version != self.version + 1:
                        self.gaps.append((self.version, msg.version))
                        if self.resync_on_gap:
                            await ws.send(encode(Resync()))
                        continue
                    target = self.flags if msg.kind == "flag" else self.segments
                    if isinstance(msg, Patch):
                        target[msg.key] = msg.data
                    else:
                        target.pop(msg.key, None)
                    self.version = msg.version
                else:
                    continue
                if self.ack:
                    await ws.send(encode(Ack(self.version)))
        except websockets.ConnectionClosed:
            pass
        finally:
            if ws.close_code is not None:
                self.close_code = ws.close_code
                self.close_reason = ws.close_reason or ""
            elif ws.protocol.close_rcvd is not None:
                self.close_code = ws.protocol.close_rcvd.code
                self.close_reason = ws.protocol.close_rcvd.reason
            else:
                self.close_code = 1006

    @property
    def hello_epoch(self) -> str:
        return self.hello.epoch if self.hello else ""

    def types(self) -> list[str]:
        return [m.type for m in self.messages]

    def since_hello(self) -> list[Any]:
        """Messages of the current connection, hello first."""
        return self.messages[self.hello_at :]

    async def wait_version(self, version: int, within: float = 10.0) -> None:
        await wait_until(
            lambda: self.version >= version, within, what=f"version {version} (have {self.version})"
        )

    async def wait_closed(self, within: float = 10.0) -> int:
        await wait_until(
            lambda: self._task is not None and self._task.done(), within, what="the stream to close"
        )
        assert self.close_code is not None
        return self.close_code

    async def send(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
