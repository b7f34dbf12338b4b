"""Read-your-writes for evaluations at the cost of one store read per batch, not per request.

Why: an evaluation is answered from this process's mirror, but it must reflect
every write answered before it arrived, on any instance, so it first reads the
environment's version from the store.  Under load (OFREP polling, the
evaluate endpoint) that read was one Redis round trip per request and the
largest cost of a request.  Concurrent evaluations of one environment can share
a read, as long as it *started after* each of them arrived: a read already in
flight may predate a write the caller saw answered, so late callers wait for
the next read, which starts when the current one ends.  Each caller still gets
a version at least as new as any write answered before it arrived; the store
sees at most one read in flight per environment and process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["VersionReads"]

Read = Callable[[str], Awaitable[dict[str, Any]]]


class VersionReads:
    """Coalesced reads of environments' info (``version``, ``epoch``), per process."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._queued: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def read(self, env: str, read: Read) -> dict[str, Any]:
        """``read(env)``'s answer, from a call that started after this one was made.

        Raises:
            whatever ``read`` raised (every caller sharing that read gets it).
        """
        running = self._running.get(env)
        if running is None:
            fut = self._start(env, read)
        else:
            fut = self._queued.get(env) or self._queue(env)
        return await asyncio.shield(fut)

    def _queue(self, env: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queued[env] = fut
        return fut

    def _start(
        self, env: str, read: Read, fut: asyncio.Future[dict[str, Any]] | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
        self._running[env] = fut
        task = asyncio.ensure_future(read(env))
        task.add_done_callback(lambda t: self._done(env, read, fut, t))
        return fut

    def _done(
        self,
        env: str,
        read: Read,
        fut: asyncio.Future[dict[str, Any]],
        task: asyncio.Future[dict[str, Any]],
    ) -> None:
        if not fut.done():
            if task.cancelled():
                fut.cancel()
            elif task.exception() is not None:
                fut.set_exception(task.exception())  # type: ignore[arg-type]
                fut.exception()  # retrieved: waiters re-raise it
            else:
                fut.set_result(task.result())
        queued = self._queued.pop(env, None)
        if queued is not None:
            self._start(env, read, queued)
        else:
            del self._running[env]
