"""Shared helpers for the admin API, CLI and OpenAPI tests (no tests of its own).

``live_server`` backs each module's ``live`` fixture: one real server process
per test module with a prefix of its own in the suite's Redis; tests keep out
of each other's way by creating their own environments.  ``api`` authenticates
with an admin key named "test admin" created through the API itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.redisproc import free_port

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
    proc: subprocess.Popen[bytes]


def start_server(
    redis_url: str, prefix: str, **env: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    environ = {
        **os.environ, "FLAGWIRE_REDIS_URL": redis_url, "FLAGWIRE_REDIS_PREFIX": prefix,
        "FLAGWIRE_ADMIN_KEY": env.pop("admin_key", "fw_admin_test_" + uuid.uuid4().hex),
        "FLAGWIRE_PORT": str(port), "FLAGWIRE_LOG_FORMAT": "json", **env,
    }
    import flagwire_server

    if (Path(flagwire_server.__file__).parent / "cli.py").exists():
        cmd = [str(VENV_BIN / "flagwire"), "serve", "--port", str(port), "--redis-url", redis_url]
    else:  # until the CLI lands
        cmd = [str(VENV_BIN / "uvicorn"), "--factory", "flagwire_server.app:create_app_from_env",
               "--port", str(port), "--log-level", "warning"]
    # Logs go to a file: an unread pipe would fill up and block the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the server)
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200:
                return proc, url, environ["FLAGWIRE_ADMIN_KEY"]
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def live_server(redis_url: str) -> Iterator[Live]:
    """Body of each test module's ``live`` fixture (module-scoped there)."""
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    proc, url, env_key = start_server(redis_url, prefix)
    boot = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {env_key}"})
    made = boot.post("/keys", json={"name": "test admin", "kind": "admin"})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {secret}"},
                       timeout=30)
    r = redis.Redis.from_url(redis_url)
    try:
        yield Live(url, url + "/api/v1", env_key, secret, prefix, r, api, proc)
    finally:
        api.close()
        boot.close()
        stop_server(proc)
        for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(k)
        r.close()


def redis_dump(live: Live, env: str | None = None) -> dict[bytes, Any]:
    """Every key (of one environment, or of the whole prefix) with its content."""
    r = live.redis
    pattern = f"{live.prefix}:{{{env}}}:*" if env else f"{live.prefix}:*"
    out: dict[bytes, Any] = {}
    for k in r.scan_iter(match=pattern, count=1000):
        if b":acks:" in k:  # written by the fan-out, not by a request
            continue
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
