"""Change notifications: callbacks and bounded async streams.

The subscription state machine (:mod:`flagwire.core.subscription`) computes
the changes a message made (:mod:`flagwire.core.changes`: ``diff`` for a
snapshot, one change for a patch); the client hands them to a
:class:`ChangeHub`, which calls the registered callbacks and feeds the async
iterators.  Iterators never grow
without bound: :class:`ChangeStream` keeps the newest ``maxsize`` changes and
drops the oldest (``dropped`` counts them); :class:`ValueWatch` keeps only
the latest value, since a watcher wants to know where a flag *is*, not every
step it took to get there.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flagwire.core.changes import FlagChange
from flagwire.core.evaluation import Snapshot

__all__ = ["ChangeHub", "ChangeStream", "ValueWatch"]


class ChangeStream:
    """``async for change in client.changes(key)``: a bounded, drop-oldest queue.

    Ends (``StopAsyncIteration``) when the client closes or :meth:`close` is
    called.  Must be iterated on the client's event loop.
    """

    def __init__(self, key: str | None, maxsize: int) -> None:
        self.key = key
        self._queue: deque[FlagChange] = deque(maxlen=maxsize)
        self._event = asyncio.Event()
        self._closed = False
        self.dropped = 0  #: changes discarded because the consumer fell behind

    def push(self, changes: Iterable[FlagChange], snapshot: Snapshot) -> None:
        queue = self._queue
        for change in changes:
            if self.key is None or change.key == self.key:
                if len(queue) == queue.maxlen:
                    self.dropped += 1
                queue.append(change)
        if queue:
            self._event.set()

    def close(self) -> None:
        """Stop the iteration (after the changes already queued)."""
        self._closed = True
        self._event.set()

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> FlagChange:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self._queue.popleft()


class ValueWatch:
    """``async for value in client.watch(key, context)``: the value, each time it changes.

    Yields the current value first, then every new value for this context.
    Values are coalesced: a consumer that falls behind sees the latest value,
    not every intermediate one.
    """

    _MISSING: Any = object()

    def __init__(
        self, key: str, context: Mapping[str, Any], default: Any, snapshot: Snapshot | None
    ) -> None:
        self.key = key
        self.context = context
        self.default = default
        self._last: Any = self._MISSING
        self._pending: Any = self._MISSING
        self._event = asyncio.Event()
        self._closed = False
        self._evaluate(snapshot)

    def _evaluate(self, snapshot: Snapshot | None) -> None:
        value = (
            self.default
            if snapshot is None
            else snapshot.evaluate(self.key, self.context, self.default).value
        )
        latest = self._last if self._pending is self._MISSING else self._pending
        if latest is self._MISSING or latest != value or type(latest) is not type(value):
            self._pending = value
            self._event.set()

    def push(self, changes: Iterable[FlagChange], snapshot: Snapshot) -> None:
        self._evaluate(snapshot)

    def close(self) -> None:
        """Stop the iteration."""
        self._closed = True
        self._event.set()

    def __aiter__(self) -> ValueWatch:
        return self

    async def __anext__(self) -> Any:
        while self._pending is self._MISSING:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        if self._closed:
            raise StopAsyncIteration
        value, self._pending = self._pending, self._MISSING
        self._last = value
        return value


ChangeCallback = Callable[[FlagChange], object]


class ChangeHub:
    """Callbacks and iterators interested in changes; everything runs on the client's loop."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._callbacks: list[tuple[str | None, ChangeCallback]] = []
        self._batch_callbacks: list[Callable[[list[FlagChange]], object]] = []
        # Weak: an iterator the application dropped (``break``) unsubscribes itself.
        self._streams: weakref.WeakSet[ChangeStream | ValueWatch] = weakref.WeakSet()
        self._closed = False

    def add_callback(self, callback: ChangeCallback, key: str | None) -> Callable[[], None]:
        entry = (key, callback)
        self._callbacks.append(entry)

        def remove() -> None:
            if entry in self._callbacks:
                self._callbacks.remove(entry)

        return remove

    def add_batch_callback(self, callback: Callable[[list[FlagChange]], object]) -> None:
        """Call ``callback(changes)`` once per message with all the changes it made."""
        self._batch_callbacks.append(callback)

    def add_stream(self, stream: ChangeStream | ValueWatch) -> None:
        if self._closed:
            stream.close()
        else:
            self._streams.add(stream)

    def publish(self, changes: list[FlagChange], snapshot: Snapshot) -> None:
        """Tell everyone; a failing callback is logged and never stops the others."""
        if not changes:
            return
        for stream in list(self._streams):
            stream.push(changes, snapshot)
        for key, callback in list(self._callbacks):
            for change in changes:
                if key is None or change.key == key:
                    try:
                        callback(change)
                    except Exception:
                        self._logger.exception("flagwire: on_change callback %r failed", callback)
        for batch_callback in list(self._batch_callbacks):
            try:
                batch_callback(changes)
            except Exception:
                self._logger.exception("flagwire: change callback %r failed", batch_callback)

    def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream.close()
        self._streams.clear()
        self._callbacks.clear()
        self._batch_callbacks.clear()
