"""In-memory token buckets for the admin API (per key, and per IP for bad keys).

Why in memory and per process: the limits protect this process and slow down
key guessing; they need no coordination between instances to do that, and a
Redis round trip per request would cost more than the requests they limit.
Buckets are bounded in number (least recently used ones are dropped).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["RateLimiter"]

_MAX_BUCKETS: Final = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets: ``rate`` tokens per second, holding at most ``burst``.

    Args:
        rate: tokens added per second.
        burst: bucket capacity (the largest burst allowed).
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = max(rate, 1e-9)
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @classmethod
    def per_minute(cls, count: int) -> RateLimiter:
        """``count`` per minute on average, bursts of up to ``count`` (at least 1)."""
        return cls(rate=max(count, 1) / 60.0, burst=max(count, 1))

    def _bucket(self, name: str, now: float) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[name] = bucket
            if len(self._buckets) > _MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(name)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

    def take(self, name: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; returns 0 when allowed, else seconds until it would be."""
        now = time.monotonic()
        bucket = self._bucket(name, now)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def blocked(self, name: str) -> float:
        """Seconds until one token is available (0 when one is), without taking it."""
        bucket = self._bucket(name, time.monotonic())
        return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate
