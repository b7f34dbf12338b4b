"""Shared helpers for the admin API, CLI and OpenAPI tests (no tests of its own).

``live_server`` backs each module's ``live`` fixture: one real server (the
app under uvicorn in this process, ``tests/support/inprocess.py``) per test
module with a prefix of its own in the suite's Redis; tests keep out of each
other's way by creating their own environments.  ``api`` authenticates
with an admin key named "test admin" created through the API itself.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.inprocess import InProcessServer

VENV_BIN = Path(sys.executable).parent


@dataclass
class Live:
    url: str  # http://127.0.0.1:port
    base: str  # url + /api/v1
    env_admin_key: str
    admin_key: str
    prefix: str
    redis: redis.Redis
    api: httpx.Client
    server: InProcessServer


def start_server(redis_url: str, prefix: str, **env: str) -> InProcessServer:
    """A real server (uvicorn in this process, on a free port) with extra settings."""
    return InProcessServer(redis_url, prefix=prefix, env=env).start()


def stop_server(server: InProcessServer) -> None:
    server.stop()


def live_server(redis_url: str) -> Iterator[Live]:
    """Body of each test module's ``live`` fixture (module-scoped there)."""
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    server = start_server(redis_url, prefix)
    url, env_key = server.url, server.admin_key
    boot = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {env_key}"})
    made = boot.post("/keys", json={"name": "test admin", "kind": "admin"})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    api = httpx.Client(
        base_url=url + "/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    r = redis.Redis.from_url(redis_url)
    try:
        yield Live(url, url + "/api/v1", env_key, secret, prefix, r, api, server)
    finally:
        api.close()
        boot.close()
        stop_server(server)
        for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(k)
        r.close()


def redis_dump(live: Live, env: str | None = None) -> dict[bytes, Any]:
    """Every key (of one environment, or of the whole prefix) with its content."""
    r = live.redis
    pattern = f"{live.prefix}:{{{env}}}:*" if env else f"{live.prefix}:*"
    out: dict[bytes, Any] = {}
    for k in r.scan_iter(match=pattern, count=1000):
        if b":acks:" in k or k.endswith((b":conns", b":floors")):
            continue  # written by the fan-out (when it finds an environment), not by a request
        t = r.type(k)
        if t == b"hash":
            out[k] = r.hgetall(k)
        elif t == b"list":
            out[k] = r.lrange(k, 0, -1)
        elif t == b"stream":
            out[k] = r.xrange(k)
        elif t == b"string":
            out[k] = r.get(k)
    return out
