"""Open a Redis connection from a URL: ``redis://``, ``rediss://`` (TLS), ``unix://``.

One small function on purpose: other URL schemes (``redis+sentinel://``,
``redis+cluster://``) are added here and nowhere else.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

__all__ = ["SCHEMES", "connect"]

SCHEMES = ("redis", "rediss", "unix")


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for ``url`` (bytes replies, health-checked connections).

    Args:
        url: ``redis://[user:pass@]host:port/db``, ``rediss://...`` or
            ``unix:///path/to/socket?db=0``.
        **options: passed to ``redis.asyncio.Redis.from_url`` (they win over defaults).

    Raises:
        ValueError: an unsupported scheme.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}; expected one of {SCHEMES}")
    kwargs: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": False,
    }
    kwargs.update(options)
    return aioredis.Redis.from_url(url, **kwargs)
