"""OFREP change notifications: one environment's Server-Sent Events listeners.

Why here, beside the WebSocket feed: a remote (OFREP) client learns of a change
from the same per-process fan-out that streams changes to the SDKs.
:meth:`EnvFeed.apply <flagwire_server.stream.feed.EnvFeed.apply>` calls
:meth:`Listeners.notify` once per change; the event is encoded once and the
same bytes are handed to every listener, one frame per listener.

The events follow OFREP's proposed ADR-0008 ("Server-Sent Events for bulk
evaluation changes", open-feature/protocol): notification only,
``data: {"type": "refetchEvaluation", "etag": ..., "lastModified": ...}`` with
an ``id`` a reconnecting client sends back as ``Last-Event-ID``; the client
then re-fetches the bulk evaluation.

Bounded: a listener holds at most one pending event.  Events only say "fetch
again", so a newer one replaces an unsent older one — a slow reader costs
no memory and still ends up fetching the latest state.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import orjson

__all__ = ["Listener", "Listeners", "event_id", "refetch_event"]

#: What a listener is sent when the server closes it (shutdown, revoked key).
_CLOSED: Final = b""


def event_id(epoch: str, version: int) -> str:
    """The SSE ``id`` of the change to ``version`` (sent back as ``Last-Event-ID``)."""
    return f"{epoch}-{version}"


def refetch_event(epoch: str, version: int, t_ms: int | None = None) -> bytes:
    """One ``refetchEvaluation`` event, ready to write."""
    data = orjson.dumps(
        {
            "type": "refetchEvaluation",
            "etag": f'"{event_id(epoch, version)}"',
            "lastModified": int((t_ms if t_ms is not None else time.time() * 1000) // 1000),
        }
    )
    return b"id: %s\nevent: message\ndata: %s\n\n" % (event_id(epoch, version).encode(), data)


class Listener:
    """One open event stream: at most one event waiting to be written."""

    __slots__ = ("_pending", "_wake", "closed", "key_id")

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        self.closed = False
        self._pending: bytes | None = None
        self._wake = asyncio.Event()

    def offer(self, event: bytes) -> None:
        """Hand over an event (replacing an unsent one); never blocks."""
        if not self.closed:
            self._pending = event
            self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._pending = _CLOSED
        self._wake.set()

    async def next(self, quiet: float) -> bytes | None:
        """The next event; ``b""`` once closed; None after ``quiet`` seconds without one."""
        if self._pending is None:
            try:
                async with asyncio.timeout(quiet):
                    await self._wake.wait()
            except TimeoutError:
                return None
        event, self._pending = self._pending, None
        if not self.closed:
            self._wake.clear()
        return event


class Listeners:
    """The event-stream listeners of one environment in this process."""

    def __init__(self) -> None:
        self._all: set[Listener] = set()

    def __len__(self) -> int:
        return len(self._all)

    def add(self, key_id: str) -> Listener:
        listener = Listener(key_id)
        self._all.add(listener)
        return listener

    def discard(self, listener: Listener) -> None:
        self._all.discard(listener)

    def notify(self, epoch: str, version: int, t_ms: int | None = None) -> int:
        """Tell every listener that ``version`` is out; returns how many were told.

        The event is encoded once; no await, no per-listener allocation.
        """
        if not self._all:
            return 0
        event = refetch_event(epoch, version, t_ms)
        for listener in self._all:
            listener.offer(event)
        return len(self._all)

    def close_all(self) -> None:
        for listener in self._all:
            listener.close()
        self._all.clear()

    def close_key(self, key_id: str) -> None:
        for listener in [x for x in self._all if x.key_id == key_id]:
            listener.close()
            self._all.discard(listener)
