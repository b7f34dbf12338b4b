"""The change reader's retry delay, pure: exponential with equal jitter.

Equal jitter (each delay uniform in ``[ceiling / 2, ceiling]``) rather than
the client's full jitter (``[0, ceiling]``): a reader that lost Redis retries
alone, not in a crowd, and a delay near zero would only spin on a Redis that
is still down.  The half that stays random keeps the readers of one process's
environments from retrying in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["RetryDelay"]


class RetryDelay:
    """Delays from ``first`` doubling to ``cap`` seconds, each drawn in ``[c/2, c]``.

    Args:
        first: ceiling of the first delay.
        cap: largest ceiling.
        rng: a ``random()``-like callable (injectable so tests are deterministic).
    """

    def __init__(
        self, first: float = 0.05, cap: float = 2.0, rng: Callable[[], float] | None = None
    ) -> None:
        self.first, self.cap, self.ceiling = first, cap, first
        self._rng = rng or random.random

    def next(self) -> float:
        """The next delay; the ceiling doubles for the one after."""
        c = self.ceiling
        self.ceiling = min(self.cap, c * 2)
        return c / 2 + self._rng() * c / 2

    def reset(self) -> None:
        """The operation succeeded: start again from ``first``."""
        self.ceiling = self.first
