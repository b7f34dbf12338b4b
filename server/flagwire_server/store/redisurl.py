"""Open a Redis connection from a URL: ``redis://``, ``rediss://`` (TLS), ``unix://``,
``redis+sentinel://`` and ``redis+cluster://`` (each also as ``rediss+...`` for TLS).

One small function on purpose: every URL scheme is handled here and nowhere else.

* ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]``:
  the sentinels to ask; the client always talks to the current primary of
  ``service_name`` and finds the new one after a failover.  The credentials
  are the data nodes'; ``?sentinel_password=...`` when the sentinels have one.
* ``redis+cluster://[user:pass@]host:port[,host:port...]``: any reachable
  nodes of a Redis Cluster; the rest are discovered.  Every key of one
  environment carries the hash tag ``{env}``, so each script stays in one slot.
"""

from __future__ import annotations

import inspect
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis

__all__ = ["COMMAND_TIMEOUT_S", "SCHEMES", "connect"]

#: How long one command may wait for Redis's answer before the caller gets
#: ``StoreUnavailable`` (an admin write answers 503).  Set here, not left to
#: redis-py: its default was "wait forever" before 8.0, so a write through a
#: process cut off from Redis hung until the network healed, then succeeded.
COMMAND_TIMEOUT_S = 5.0

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for ``url`` (bytes replies, health-checked connections).

    Args:
        url: ``redis://[user:pass@]host:port/db``, ``rediss://...``,
            ``unix:///path/to/socket?db=0``, ``redis+sentinel://h1:26379,h2:26379/mymaster``
            or ``redis+cluster://h1:6379,h2:6379``.
        **options: passed to the client (they win over defaults).

    Raises:
        ValueError: an unsupported scheme or a malformed sentinel/cluster URL.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}; expected one of {SCHEMES}")
    kwargs: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": 2.0,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": False,
    }
    if scheme == "unix":
        # TCP keep-alive is a TCP option: redis-py's unix connection refuses the argument.
        del kwargs["socket_keepalive"]
    kwargs.update(options)
    if scheme.endswith("+sentinel"):
        return _sentinel(parts.netloc, parts.path, parts.query, scheme.startswith("rediss"), kwargs)
    if scheme.endswith("+cluster"):
        return _cluster(parts.netloc, scheme.startswith("rediss"), kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    creds, _, hostlist = netloc.rpartition("@")
    user, _, password = creds.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError(f"no host in {item!r}")
        hosts.append((host.strip("[]"), int(port) if port else default_port))
    if not hosts:
        raise ValueError("no hosts in the Redis URL")
    return (unquote(user) or None), (unquote(password) or None), hosts


def _sentinel(
    netloc: str, path: str, query: str, tls: bool, kwargs: dict[str, Any]
) -> aioredis.Redis:
    from redis.asyncio.sentinel import Sentinel

    user, password, hosts = _hosts(netloc, 26379)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("redis+sentinel:// needs the service name as its path: .../mymaster")
    params = parse_qs(query)
    sentinel_kwargs: dict[str, Any] = {
        k: kwargs[k] for k in ("socket_connect_timeout", "socket_timeout") if k in kwargs
    }
    if "sentinel_password" in params:
        sentinel_kwargs["password"] = params["sentinel_password"][0]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, ssl=tls)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        service, username=user, password=password, db=int(db or 0), **kwargs
    )
    return cast(aioredis.Redis, client)


def _cluster(netloc: str, tls: bool, kwargs: dict[str, Any]) -> aioredis.Redis:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    user, password, hosts = _hosts(netloc, 6379)
    accepted = inspect.signature(RedisCluster.__init__).parameters
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in hosts],
        username=user,
        password=password,
        ssl=tls,
        **{k: v for k, v in kwargs.items() if k in accepted},
    )
    # RedisCluster speaks the same commands for single-slot keys; callers type it as Redis.
    return cast(aioredis.Redis, client)
