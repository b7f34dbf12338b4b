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


class _Attempts:
    """The bookkeeping both loops share: the deadline, and when to give up."""

    def __init__(self, within: float, what: str) -> None:
        self.within, self.what = within, what
        self.deadline = time.monotonic() + within

    def settled(self, value: Any, last: BaseException | None) -> bool:
        """True when ``value`` answers the poll; AssertionError once time is up."""
        if value:
            return True
        if time.monotonic() >= self.deadline:
            extra = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
            raise AssertionError(
                f"timed out after {self.within:.1f}s waiting for {self.what}{extra}"
            )
        return False


async def poll(
    predicate: Any,
    within: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; AssertionError after ``within`` s."""
    attempts = _Attempts(within, what)
    while True:
        last: BaseException | None = None
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            value, last = None, exc
        if attempts.settled(value, last):
            return value
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
    attempts = _Attempts(within, what)
    while True:
        last: BaseException | None = None
        try:
            value = predicate()
        except ignore as exc:
            value, last = None, exc
        if attempts.settled(value, last):
            return value
        time.sleep(interval)
