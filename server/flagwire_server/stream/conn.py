"""One open stream as the fan-out sees it: where its frames go, and how it is closed."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from flagwire_server.stream.frames import payload_of
from flagwire_server.stream.uvicorn_fence import close_now, close_sent, transport_of

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from flagwire_server.stream.reports import ConnReport

__all__ = ["Conn"]


class Conn:
    """One stream's transport, versions and message budget.

    ``proto``/``transport`` are uvicorn's sans-I/O protocol and its asyncio
    transport; when they are not reachable (another ASGI server) ``ws`` is
    used instead through a small bounded per-connection queue — slower, but
    correct and still bounded.  Which feed the stream belongs to is the
    feed's business: closing through :meth:`EnvFeed.close
    <flagwire_server.stream.feed.EnvFeed.close>` detaches and counts it.
    """

    __slots__ = (
        "acked",
        "attached",
        "base",
        "closed",
        "closing",
        "insight",
        "key_id",
        "out",
        "out_bytes",
        "out_task",
        "proto",
        "snapshot_at",
        "stamp",
        "tokens",
        "transport",
        "ws",
    )

    def __init__(self, key_id: str, proto: WebSocketsSansIOProtocol | None, ws: Any = None) -> None:
        self.key_id = key_id
        self.proto = proto
        self.transport: asyncio.Transport | None = transport_of(proto) if proto else None
        self.ws = ws
        #: The version this stream was attached or last resnapshotted at.
        self.base = 0
        #: The highest version it acknowledged.
        self.acked = 0
        self.attached = False
        self.closed = False
        #: Message budget (token bucket) and when it was last refilled (monotonic).
        self.tokens = 0.0
        self.stamp = 0.0
        #: When the last resync snapshot was sent (monotonic; 0: never).
        self.snapshot_at = 0.0
        #: What the client said in ``identify`` (fleet insight; None until then).
        self.insight: ConnReport | None = None
        # Only the fallback path queues; the fast path never allocates a queue.
        self.out: deque[bytes] | None = None
        self.out_bytes = 0
        self.out_task: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[None] | None = None

    # --- writing ----------------------------------------------------------

    def write(self, frame: bytes) -> bool:
        """Write one frame now (no buffer check); False when the stream is closing."""
        if self.closed:
            return False
        t = self.transport
        if t is not None:
            if t.is_closing() or (self.proto is not None and close_sent(self.proto)):
                return False
            t.write(frame)
            return True
        return self.push(frame, limit=None)

    def buffered(self) -> int:
        t = self.transport
        return t.get_write_buffer_size() if t is not None else self.out_bytes

    def push(self, frame: bytes, limit: int | None) -> bool:
        """Fallback path (transport not reachable): a bounded queue drained by one task."""
        if limit is not None and self.out_bytes > limit:
            return False
        if self.out is None:
            self.out = deque()
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_task is None:
            self.out_task = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        try:
            while self.out and not self.closed:
                frame = self.out.popleft()
                self.out_bytes -= len(frame)
                await self.ws.send_text(payload_of(frame).decode())
        except Exception:  # the peer went away; the endpoint notices and detaches
            self.out = None
            self.out_bytes = 0
        finally:
            self.out_task = None

    # --- closing ----------------------------------------------------------

    def shut(self, code: int, reason: str) -> bool:
        """Close from the server side, now, without awaiting a slow peer.

        Returns False when it was already closed.  Callers go through the
        feed, which also detaches the stream.
        """
        if self.closed:
            return False
        self.closed = True
        if self.proto is not None:
            close_now(self.proto, code, reason)
        elif self.ws is not None:
            self.out = None
            self.out_bytes = 0
            # Referenced here until it ends (a bare task could be collected mid-close).
            self.closing = asyncio.get_running_loop().create_task(self.ws.close(code, reason))
        return True
