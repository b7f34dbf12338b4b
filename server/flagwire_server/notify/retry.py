"""When to try a delivery again, and how long to wait first (pure).

A receiver's answer decides: 2xx is delivered; 408, 429 and 5xx, a timeout
or a network error are worth retrying; any other status is final (the
receiver understood and refused; sending again would get the same answer).
Waits grow exponentially with "equal jitter" (half fixed, half random), so a
fleet of servers retrying one receiver that came back does not hit it at one
instant, while each wait is still at least half the nominal one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

__all__ = ["RETRY_STATUSES", "Verdict", "backoff", "verdict"]

Verdict = Literal["delivered", "retry", "final"]

RETRY_STATUSES: Final = frozenset({408, 425, 429})


def verdict(status: int | None) -> Verdict:
    """What a response's status (None: no response) means for the delivery."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in RETRY_STATUSES:
        return "retry"
    return "final"


def backoff(attempt: int, *, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next.

    Nominally ``base * 2**(attempt-1)``, at most ``cap``; the wait is between
    half of that and all of it.
    """
    nominal: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return nominal / 2 + rng() * nominal / 2
