"""Fleet-insight reports from the swarm: each connection identifies once, then sends a summary
every interval, staggered over the interval so that the server sees a steady rate.

The frames are built once by the coordinator (a few distinct summaries, masked with the
swarm's fixed zero mask) and the same bytes are written by every connection, so the client
side costs a socket write per summary and nothing per flag: what is measured is the server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench._swarm_worker import Worker, _Conn

__all__ = ["Reporter"]


def _frame(payload: bytes) -> bytes:
    from bench._swarm_worker import _client_frame

    return _client_frame(1, payload)


class Reporter:
    """Sends ``identify`` on every open connection of ``worker``, then a summary every
    ``interval`` seconds per connection (connection *k* of *n* first at *k/n* of it)."""

    def __init__(
        self, worker: Worker, identify: bytes, summaries: list[bytes], interval: float
    ) -> None:
        self.w = worker
        self.identify = _frame(identify)
        self.frames = [_frame(s) for s in summaries]
        self.interval = interval
        self.handles: list[asyncio.TimerHandle] = []
        self.sent = 0
        self.bytes = 0
        self.skipped = 0
        self.running = False

    def start(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.running = True
        conns = [c for c in self.w.conns if c.transport is not None]
        n = max(1, len(conns))
        for k, conn in enumerate(conns):
            assert conn.transport is not None
            conn.transport.write(self.identify)
            self.handles.append(loop.call_later(self.interval * k / n, self._tick, conn, k))
        return {"reporting": len(conns), "identify_bytes": len(self.identify)}

    def _tick(self, conn: _Conn, k: int) -> None:
        if not self.running:
            return
        t = conn.transport
        if t is None or t.is_closing():
            self.skipped += 1
        else:
            frame = self.frames[(k + self.sent) % len(self.frames)]
            t.write(frame)
            self.sent += 1
            self.bytes += len(frame)
        self.handles[k] = asyncio.get_running_loop().call_later(self.interval, self._tick, conn, k)

    def stats(self) -> dict[str, Any]:
        buffered = sum(
            c.transport.get_write_buffer_size() for c in self.w.conns if c.transport is not None
        )
        return {
            "sent": self.sent,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "client_write_buffer_bytes": buffered,
        }

    def stop(self) -> dict[str, Any]:
        self.running = False
        for h in self.handles:
            h.cancel()
        self.handles = []
        return self.stats()
