"""Reconnect policy, pure: jittered schedules and an error classifier.

No I/O and no clocks of its own: the connection loop asks :func:`classify`
what a failure means (retry, resync, soon, give up) and :func:`pace_of` how
soon, then asks :class:`Backoff` for the delay, telling it how long the
outage has lasted.  All of it is tested without a network.

Three paces, because failures say different things about the server:

* ``RESTART`` — the server went away (close 1001/1012, the connection just
  died) or is not listening (connection refused, a proxy's 502/504).  It is
  restarting or gone, and the kill switch someone flips the moment it is back
  must reach us within seconds, however many restarts came before.  So the
  ceiling is ``restart_cap`` (1.5 s) from the first retry on, for the first
  ``patience`` seconds of an outage, and only a longer outage backs off
  further (doubling every ``patience`` seconds, up to ``cap``).  A connection
  that delivered current data ends the outage.  The first retry is not made
  faster: a dead server's whole fleet loses its connections in the same
  instant, and a short first window (v1's 0.2 s) brought it back onto the
  survivors in a fifth of a second.
* ``ERROR`` — the server answered, with an error (HTTP 500, close 1011,
  a bad frame).  Retrying at once would hammer a broken server, so the
  ceiling doubles per failure up to ``cap`` (30 s) and only a connection that
  stayed healthy for ``reset_after`` seconds resets it.
* ``HINTED`` — the server said when (HTTP 429/503 ``Retry-After``, or a close
  reason carrying ``retry-after=N``): a server shedding load decides how
  spread out its clients come back.

Why full jitter everywhere: when a server restarts, every client it had loses
its connection in the same millisecond.  A fixed schedule (even an
exponential one) would bring them all back in the same millisecond too.
Drawing each delay uniformly from ``[0, ceiling]`` spreads them over the
whole window.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from flagwire.core.errors import AuthenticationError, ProtocolError
from flagwire.core.protocol import CloseCode

__all__ = [
    "Action",
    "Backoff",
    "BackoffSettings",
    "Closed",
    "Pace",
    "Refused",
    "classify",
    "pace_of",
    "parse_retry_after",
    "retry_hint",
]


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    """When to try again.

    Attributes:
        initial: ceiling of the first delay (seconds); the first retry is fast.
        factor: growth of the ceiling per consecutive failure.
        cap: largest ceiling (seconds).
        reset_after: a connection that stayed up this long resets the error
            schedule.
        going_away: ceiling of the delay after the server said it is going
            away (close 1001/1012): soon, but jittered so a restarting server
            is not met by all its clients at once.
        restart_cap: ceiling of every delay while the server is restarting or
            unreachable (the first retry too), for the first ``patience``
            seconds of an outage: the window a dead server's fleet is spread
            over, and the longest a client waits after the server is back.
        patience: an outage longer than this backs off further: the restart
            ceiling doubles every ``patience`` seconds, up to ``cap``.
        max_retry_after: a server's ``Retry-After`` is honoured up to this many
            seconds.
    """

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 30.0
    reset_after: float = 60.0
    going_away: float = 1.5
    restart_cap: float = 1.5
    patience: float = 60.0
    max_retry_after: float = 300.0


class Pace(Enum):
    """How soon to retry, by what the failure says about the server."""

    RESTART = "restart"  #: restarting or unreachable: a short, flat ceiling
    ERROR = "error"  #: answered with an error: exponential, capped
    HINTED = "hinted"  #: the server said when (``Retry-After``)


class Backoff:
    """Full-jitter backoff on three schedules (see the module docstring).

    The error schedule is delay ``n`` uniform in ``[0, min(cap, initial *
    factor**n)]``; iterating a ``Backoff`` yields it.

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
        self.failures = 0  #: consecutive ERROR failures (reset by a healthy connection)
        self.restarts = 0  #: consecutive RESTART failures (reset by current data)

    def _grown(self, n: int) -> float:
        s = self.settings
        # min() before the power would overflow after ~1000 failures.
        return float(s.initial * s.factor ** min(n, 64))

    def ceiling(self) -> float:
        """The upper bound of the next ERROR delay."""
        return float(min(self.settings.cap, self._grown(self.failures)))

    def restart_ceiling(self, outage: float = 0.0) -> float:
        """The upper bound of the next RESTART delay, ``outage`` seconds into an outage."""
        s = self.settings
        short = ceiling = min(s.restart_cap, s.cap)
        if outage > s.patience and s.patience > 0:
            # min() before the power: a week-long outage must not overflow.
            periods = min((outage - s.patience) / s.patience, 64.0)
            ceiling = max(ceiling, min(s.cap, short * 2.0**periods))
        return float(ceiling)

    def next_delay(self) -> float:
        """The delay before the next attempt on the ERROR schedule; counts one more failure."""
        delay = self._rng() * self.ceiling()
        self.failures += 1
        return delay

    def restart_delay(self, outage: float = 0.0) -> float:
        """The delay before the next attempt on the RESTART schedule.

        Args:
            outage: seconds since the client last had current data (or since
                its first attempt, if it never had).
        """
        delay = self._rng() * self.restart_ceiling(outage)
        self.restarts += 1
        return delay

    def hinted_delay(self, retry_after: float) -> float:
        """At least the server's ``retry_after``, plus jitter of up to half of it (1 s at least).

        A hint is the same number for every client the server refused in that
        second; without the jitter they would all come back together.
        """
        hint = min(max(retry_after, 0.0), self.settings.max_retry_after)
        return hint + self._rng() * max(1.0, hint / 2)

    def going_away_delay(self) -> float:
        """The delay after a close 1001: uniform in ``[0, going_away]``.

        It also lifts the error schedule to about that window (the largest
        ceiling not above it): if the server comes back broken, its fleet's
        retries must stay spread over a comparable window, or they would crowd
        it in the first instant it listens again.  (The restart schedule needs
        no lift: its window is ``restart_cap`` from the first retry.)
        """
        s = self.settings
        window = min(s.going_away, s.cap)
        if s.factor > 1:
            while self.failures < 64 and self.ceiling() * s.factor <= window:
                self.failures += 1
        return self._rng() * s.going_away

    def delay(self, pace: Pace, *, outage: float = 0.0, retry_after: float | None = None) -> float:
        """The delay for a failure of ``pace`` (see :func:`pace_of`)."""
        if pace is Pace.HINTED and retry_after is not None:
            return self.hinted_delay(retry_after)
        if pace is Pace.RESTART:
            return self.restart_delay(outage)
        return self.next_delay()

    def connected_for(self, seconds: float) -> None:
        """Report how long the last connection stayed up; a healthy one resets errors."""
        if seconds >= self.settings.reset_after:
            self.failures = 0

    def current(self) -> None:
        """A connection delivered current data: the server answers, the outage is over."""
        self.restarts = 0

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0
        self.restarts = 0

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next_delay()


class Action(Enum):
    """What the connection loop does after a failure."""

    RETRY = "retry"  #: back off, reconnect, resume from our version
    RESYNC = "resync"  #: back off, reconnect without ``since`` (fresh snapshot)
    SOON = "soon"  #: the server is going away: reconnect after a short jittered delay
    GIVE_UP = "give_up"  #: refused for a reason retrying cannot fix: stop


_RESYNC_CODES: Final = frozenset(
    {CloseCode.RESYNC, CloseCode.BAD_MESSAGE, CloseCode.MESSAGE_TOO_BIG}
)
_GIVE_UP_CODES: Final = frozenset({CloseCode.UNAUTHORIZED})
#: Going away (1001) and service restart (1012, uvicorn's own shutdown code).
_SOON_CODES: Final = frozenset({CloseCode.GOING_AWAY, 1012})
#: A wrong key (401), a key of the wrong kind or environment (403), a request
#: the server cannot serve as sent (400: e.g. an admin key without ``?env=``),
#: an environment that does not exist (404): the same request gets the same answer.
_GIVE_UP_STATUSES: Final = frozenset({400, 401, 403, 404})
#: A proxy in front of a server that is not there (yet).
_GATEWAY_STATUSES: Final = frozenset({502, 504})
_REASON_HINT: Final = re.compile(r"retry[-_ ]after[=: ]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection the server closed with ``code`` (None: no close frame, it just died)."""

    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """The HTTP handshake was answered with ``status`` instead of 101.

    Attributes:
        status: the HTTP status.
        detail: the problem body's ``detail`` (the server's reason), if any.
        code: the problem body's ``code`` (e.g. ``env_required``), if any.
        retry_after: seconds from the ``Retry-After`` header, if any.
    """

    status: int
    detail: str = ""
    code: str = ""
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date).

    Args:
        value: the header value.
        now: the current wall-clock time (``time.time()``), for a date.

    Returns:
        Seconds (0 or more), or None if absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_hint(event: BaseException | Closed | Refused) -> float | None:
    """The server's own word on when to come back: ``Retry-After`` or a close reason's hint."""
    if isinstance(event, Refused):
        return event.retry_after
    if isinstance(event, Closed) and event.reason:
        match = _REASON_HINT.search(event.reason)
        if match:
            return float(match.group(1))
    return None


def classify(event: BaseException | Closed | Refused) -> Action:
    """Decide what a failure means for the subscription.

    Args:
        event: a :class:`Closed` connection, a :class:`Refused` handshake, or
            an exception (``OSError``, timeouts, :class:`ProtocolError` for a
            malformed server message, :class:`AuthenticationError`).

    Returns:
        :attr:`Action.GIVE_UP` for a refusal retrying cannot fix (close 4001,
        HTTP 400/401/403/404), :attr:`Action.RESYNC` when our state may be
        wrong (4000, a bad message, a too-big frame), :attr:`Action.SOON` for
        1001/1012, else :attr:`Action.RETRY` (429 and 503 included: they say
        when, see :func:`pace_of`).
    """
    if isinstance(event, Closed):
        if event.code in _GIVE_UP_CODES:
            return Action.GIVE_UP
        if event.code in _RESYNC_CODES:
            return Action.RESYNC
        if event.code in _SOON_CODES:
            return Action.SOON
        return Action.RETRY
    if isinstance(event, Refused):
        return Action.GIVE_UP if event.status in _GIVE_UP_STATUSES else Action.RETRY
    if isinstance(event, AuthenticationError):
        return Action.GIVE_UP
    if isinstance(event, ProtocolError):
        return Action.RESYNC
    return Action.RETRY


def pace_of(event: BaseException | Closed | Refused) -> Pace:
    """How soon to retry after ``event`` (when :func:`classify` says to retry at all).

    Returns:
        :attr:`Pace.HINTED` when the server said when; :attr:`Pace.RESTART`
        when it went away or did not answer (close 1001/1012, a connection
        that died without a close frame, refused or timed-out connects, a
        proxy's 502/504); else :attr:`Pace.ERROR` (the server answered with
        an error).
    """
    if retry_hint(event) is not None:
        return Pace.HINTED
    if isinstance(event, Closed):
        return Pace.RESTART if event.code is None or event.code in _SOON_CODES else Pace.ERROR
    if isinstance(event, Refused):
        return Pace.RESTART if event.status in _GATEWAY_STATUSES else Pace.ERROR
    if isinstance(event, ProtocolError):
        return Pace.ERROR
    return Pace.RESTART  # OSError, TimeoutError, a handshake cut short: nobody answered
