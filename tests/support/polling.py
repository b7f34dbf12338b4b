"""Wait for something to happen: the suite's one poll-until helper, async and blocking.

Why polling and not a sleep: a fixed sleep is either too short on a loaded
machine (a flaky test) or too long everywhere else (a slow suite).  A poll
returns as soon as the condition holds and fails with a message that says
what never happened.

``predicate`` may return an awaitable (:func:`poll` awaits it); its first
truthy value is returned.  Exceptions listed in ``ignore`` count as "not
yet" (a store that is still starting, say).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

__all__ = ["poll", "poll_blocking"]


def _timed_out(within: float, what: str, last: BaseException | None) -> AssertionError:
    extra = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
    return AssertionError(f"timed out after {within:.1f}s waiting for {what}{extra}")


async def poll(
    predicate: Any,
    within: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        last: BaseException | None = None
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(within, what, last)
        await asyncio.sleep(interval)


def poll_blocking(
    predicate: Any,
    within: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """:func:`poll` for synchronous tests (``predicate`` must not be async)."""
    deadline = time.monotonic() + within
    while True:
        last: BaseException | None = None
        try:
            value = predicate()
        except ignore as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(within, what, last)
        time.sleep(interval)
