"""Refused stream handshakes in the log: each one while they are few, a count under a flood.

A refusal is the server answering (a wrong key, a missing ``?env=``, a store
that is down), not the server failing, so it is logged at info.  A fleet with
a revoked key, or someone scanning, refuses thousands a second: one line each
would drown the log and cost more than the refusals themselves.  So the first
``each`` refusals of every ``window`` are logged in full and the rest are
counted by status and written as one line when the window ends.  Every record
carries ``count`` (1 for a single refusal), so summing it over the log gives
the number of refusals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["RefusalLog"]


class RefusalLog:
    """Logs refused handshakes at info, summarising past ``each`` per ``window`` seconds.

    Args:
        logger: where the lines go.
        each: refusals per window logged one line each.
        window: seconds per window.
        clock: a monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        each: int = 10,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.each, self.window, self._clock = logger, each, window, clock
        self.window_started = clock()
        self._logged = 0
        self._held: Counter[int] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def record(self, status: int, code: str, client: str, detail: str) -> None:
        """One refused handshake."""
        now = self._clock()
        if now - self.window_started >= self.window:
            self.flush()
            self.window_started, self._logged = now, 0
        if self._logged < self.each:
            self._logged += 1
            self.logger.info(
                "stream refused: %d %s",
                status,
                detail,
                extra={"status": status, "code": code, "client": client, "count": 1},
            )
            return
        if not self._held:
            self._flush_at(self.window_started + self.window - now)
        self._held[status] += 1

    def flush(self) -> None:
        """Write the count of refusals held back in this window (nothing if none)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._held:
            return
        held, self._held = self._held, Counter()
        total = sum(held.values())
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(held.items()))
        self.logger.info(
            "stream refused %d more handshakes in %.1fs (%s)",
            total,
            max(self._clock() - self.window_started, 0.0),
            by_status,
            extra={"count": total, "statuses": {str(s): n for s, n in sorted(held.items())}},
        )

    def _flush_at(self, delay: float) -> None:
        # Without a timer the last window of a flood would stay unwritten until the next refusal.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(delay, 0.0), self.flush)
