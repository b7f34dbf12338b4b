"""The reconnect policy, without a network: jittered schedule and error classification."""

from __future__ import annotations

import itertools
import random

import pytest

from flagwire._backoff import Action, Backoff, BackoffSettings, Closed, Refused, classify
from flagwire.core.errors import AuthenticationError, ProtocolError


def test_first_retry_is_fast_and_ceiling_grows_to_the_cap() -> None:
    b = Backoff(BackoffSettings(initial=0.2, factor=2, cap=30), rng=lambda: 0.999999)
    delays = [b.next_delay() for _ in range(12)]
    assert delays[0] <= 0.2
    assert delays[1] == pytest.approx(0.4, rel=1e-3)
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == pytest.approx(30, rel=1e-3)


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    rng = random.Random(7)
    delays = [Backoff(rng=rng.random).next_delay() for _ in range(5000)]
    assert min(delays) < 0.01
    assert max(delays) > 0.19
    assert all(0 <= d <= 0.2 for d in delays)
    # uniform: each fifth of the window holds roughly a fifth of the clients
    counts = [sum(1 for d in delays if i * 0.04 <= d < (i + 1) * 0.04) for i in range(5)]
    assert all(800 < c < 1200 for c in counts), counts


def test_going_away_is_jittered_and_lifts_the_schedule_to_its_window() -> None:
    rng = random.Random(1)
    b = Backoff(BackoffSettings(going_away=2.0), rng=rng.random)
    delays = [b.going_away_delay() for _ in range(1000)]
    assert max(delays) - min(delays) > 1.5
    assert all(0 <= d <= 2.0 for d in delays)
    # if the server is not back yet, later retries stay at least that spread out
    assert 1.0 <= b.ceiling() <= 2.0


def test_healthy_connection_resets_the_schedule() -> None:
    b = Backoff(BackoffSettings(reset_after=60))
    for _ in range(8):
        b.next_delay()
    b.connected_for(5)
    assert b.failures == 8
    b.connected_for(61)
    assert b.failures == 0
    assert b.ceiling() == pytest.approx(0.2)


def test_many_failures_do_not_overflow() -> None:
    b = Backoff()
    b.failures = 10_000
    assert b.ceiling() == 30.0


@pytest.mark.parametrize(
    ("event", "action"),
    [
        (Closed(4001, "revoked"), Action.GIVE_UP),
        (Refused(401), Action.GIVE_UP),
        (Refused(403), Action.GIVE_UP),
        (AuthenticationError("no"), Action.GIVE_UP),
        (Closed(4000), Action.RESYNC),
        (Closed(4002), Action.RESYNC),
        (Closed(1009), Action.RESYNC),
        (ProtocolError("bad frame"), Action.RESYNC),
        (Closed(1001), Action.SOON),
        (Closed(1000), Action.RETRY),
        (Closed(1011), Action.RETRY),
        (Closed(1013), Action.RETRY),
        (Closed(4003), Action.RETRY),
        (Closed(None), Action.RETRY),
        (Refused(500), Action.RETRY),
        (Refused(503), Action.RETRY),
        (ConnectionRefusedError(), Action.RETRY),
        (TimeoutError(), Action.RETRY),
        (OSError("unreachable"), Action.RETRY),
    ],
)
def test_classify(event: BaseException | Closed | Refused, action: Action) -> None:
    assert classify(event) is action
