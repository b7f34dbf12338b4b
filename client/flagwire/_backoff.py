"""Reconnect policy, pure: a jittered backoff schedule and an error classifier.

No I/O and no clocks of its own: the connection loop asks :class:`Backoff`
for the next delay and tells it when a connection has been healthy, and asks
:func:`classify` what a failure means.  Both are tested without a network.

Why full jitter: when a server restarts, every client it had loses its
connection in the same millisecond.  A fixed schedule (even an exponential
one) would bring them all back in the same millisecond too.  Drawing each
delay uniformly from ``[0, ceiling]`` spreads them over the whole window.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from flagwire.core.errors import AuthenticationError, ProtocolError
from flagwire.core.protocol import CloseCode

__all__ = ["Action", "Backoff", "BackoffSettings", "Closed", "Refused", "classify"]


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    """When to try again.

    Attributes:
        initial: ceiling of the first delay (seconds); the first retry is fast.
        factor: growth of the ceiling per consecutive failure.
        cap: largest ceiling (seconds).
        reset_after: a connection that stayed up this long resets the schedule.
        going_away: ceiling of the delay after the server said it is going
            away (close 1001): soon, but jittered so a restarting server is
            not met by all its clients at once.
    """

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 60.0
    going_away: float = 2.0


class Backoff:
    """Full-jitter exponential backoff.

    Delay ``n`` is uniform in ``[0, min(cap, initial * factor**n)]``.

    Args:
        settings: the schedule.
        rng: a ``random()``-like callable returning floats in ``[0, 1)``
            (injectable so tests are deterministic).
    """

    def __init__(
        self, settings: BackoffSettings | None = None, rng: Callable[[], float] | None = None
    ) -> None:
        self.settings = settings or BackoffSettings()
        self._rng = rng or random.random
        self.failures = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        s = self.settings
        # min() before the power would overflow after ~1000 failures.
        exponent = min(self.failures, 64)
        return float(min(s.cap, s.initial * s.factor**exponent))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = self._rng() * self.ceiling()
        self.failures += 1
        return delay

    def going_away_delay(self) -> float:
        """The delay after a close 1001: uniform in ``[0, going_away]``.

        It also lifts the schedule to about that window (the largest ceiling
        not above it): if the server is restarting, not just handing us over
        to another instance, the retries that fail while it is down must stay
        spread over a comparable window, or its whole fleet of clients would
        crowd back in the first instant it listens again.
        """
        s = self.settings
        while (
            self.failures < 64
            and self.ceiling() * s.factor <= min(s.going_away, s.cap)
            and s.factor > 1
        ):
            self.failures += 1
        return self._rng() * s.going_away

    def connected_for(self, seconds: float) -> None:
        """Report how long the last connection stayed up; a healthy one resets the schedule."""
        if seconds >= self.settings.reset_after:
            self.failures = 0

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next_delay()


class Action(Enum):
    """What the connection loop does after a failure."""

    RETRY = "retry"  #: back off, reconnect, resume from our version
    RESYNC = "resync"  #: back off, reconnect without ``since`` (fresh snapshot)
    SOON = "soon"  #: the server is going away: reconnect after a short jittered delay
    GIVE_UP = "give_up"  #: the key was refused: stop


_RESYNC_CODES: Final = frozenset(
    {CloseCode.RESYNC, CloseCode.BAD_MESSAGE, CloseCode.MESSAGE_TOO_BIG}
)
_GIVE_UP_CODES: Final = frozenset({CloseCode.UNAUTHORIZED})
_GIVE_UP_STATUSES: Final = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection the server closed with ``code`` (None: no close frame, it just died)."""

    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """The HTTP handshake was answered with ``status`` instead of 101."""

    status: int


def classify(event: BaseException | Closed | Refused) -> Action:
    """Decide what a failure means for the subscription.

    Args:
        event: a :class:`Closed` connection, a :class:`Refused` handshake, or
            an exception (``OSError``, timeouts, :class:`ProtocolError` for a
            malformed server message, :class:`AuthenticationError`).

    Returns:
        :attr:`Action.GIVE_UP` for a refused key (4001, HTTP 401/403),
        :attr:`Action.RESYNC` when our state may be wrong (4000, a bad message,
        a too-big frame), :attr:`Action.SOON` for 1001, else :attr:`Action.RETRY`.
    """
    if isinstance(event, Closed):
        if event.code in _GIVE_UP_CODES:
            return Action.GIVE_UP
        if event.code in _RESYNC_CODES:
            return Action.RESYNC
        if event.code == CloseCode.GOING_AWAY:
            return Action.SOON
        return Action.RETRY
    if isinstance(event, Refused):
        return Action.GIVE_UP if event.status in _GIVE_UP_STATUSES else Action.RETRY
    if isinstance(event, AuthenticationError):
        return Action.GIVE_UP
    if isinstance(event, ProtocolError):
        return Action.RESYNC
    return Action.RETRY
