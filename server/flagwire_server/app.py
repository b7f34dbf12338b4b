"""The Starlette application: routes, state and lifespan of one server process.

``app.state`` carries ``settings``, ``redis``, ``store``, ``keys``, ``fanout``,
``metrics`` and ``instance_id`` (the admin API and the console use them).

Routes, in order: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/stream``,
the admin API (``/api/v1/...``), then the console at ``/`` (when installed).

The lifespan connects Redis (waiting up to 30 s for it), bootstraps an empty
store once (under a Redis lock, so ``--workers N`` does it once), starts the
key ring and the fan-out, and on shutdown closes every stream with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from flagwire_server.config import Settings
from flagwire_server.observability import health
from flagwire_server.observability.metrics import Metrics, RequestMetricsMiddleware
from flagwire_server.process import freeze_gc, raise_nofile
from flagwire_server.store.acks import AckReporter
from flagwire_server.store.changelog import ChangeLog
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.migrate import migrate_v1
from flagwire_server.store.redisurl import connect
from flagwire_server.stream import endpoint as stream
from flagwire_server.stream.fanout import Fanout
from flagwire_server.stream.reader import READ_BLOCK_MS

__all__ = ["bootstrap", "create_app", "create_app_from_env"]

log = logging.getLogger("flagwire.app")

INITIAL_KEYS_FILE = "initial-keys.json"
FIRST_ENV = "production"


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app of one server process (nothing connects until the lifespan runs).

    Raises:
        ValueError: no Redis URL (``flagwire serve`` provides an embedded one).
    """
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise ValueError("FLAGWIRE_REDIS_URL is not set (flagwire serve starts an embedded store)")
    instance_id = settings.instance_id or (
        f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    )
    metrics = Metrics()

    from flagwire_server.api import routes as admin

    routes: list[BaseRoute] = [
        *health.routes(settings.metrics),
        *stream.routes(),
        *admin.routes(),
    ]
    try:
        from flagwire_server import console
    except ImportError:
        log.info("console not installed; serving the API only")
    else:
        routes.extend(console.routes())

    from flagwire_server.api.problems import exception_handlers

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestMetricsMiddleware, metrics=metrics)],
        exception_handlers=exception_handlers(),
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.instance_id = instance_id
    app.state.auth_failures = stream.FailureLimiter(settings.auth_fail_limit)
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and ``--workers`` (settings from ``FLAGWIRE_*``)."""
    return create_app(Settings.from_env())


async def _connect(url: str, patience: float = 30.0) -> aioredis.Redis:
    redis = connect(url)
    deadline = time.monotonic() + patience
    while True:
        try:
            await redis.ping()
            return redis
        except Exception as exc:
            if time.monotonic() >= deadline:
                await redis.aclose()
                raise RuntimeError(f"Redis at {_safe(url)} did not answer: {exc}") from None
            log.warning("waiting for Redis", extra={"url": _safe(url), "error": str(exc)})
            await asyncio.sleep(0.5)


def _safe(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    url = settings.redis_url
    assert url is not None
    from flagwire_server.store.apikeys import KeyRing
    from flagwire_server.store.documents import Store

    raise_nofile()
    redis = await _connect(url)
    store = Store(redis, settings.redis_prefix)
    keys = KeyRing(redis, settings.redis_prefix, admin_key=settings.admin_key)
    await bootstrap(settings, redis, store, keys)
    keyspace = Keyspace(settings.redis_prefix)

    async def env_names() -> list[str]:
        return [str(e["key"]) for e in await store.list_envs()]

    fanout = Fanout(
        settings,
        changelog=ChangeLog(redis, keyspace),
        reporter=AckReporter(redis, keyspace, app.state.instance_id),
        load_env=store.load_env,
        list_envs=env_names,
        metrics=app.state.metrics,
        # Each reader blocks in XREAD on a connection of its own.
        reader_changelog=lambda: ChangeLog(
            connect(url, socket_timeout=READ_BLOCK_MS / 1000 + 1, health_check_interval=0),
            keyspace,
        ),
    )
    app.state.redis, app.state.store, app.state.keys, app.state.fanout = (
        redis,
        store,
        keys,
        fanout,
    )
    await keys.start()
    keys.on_revoke(fanout.revoke)
    await fanout.start()
    freeze_gc()
    log.info(
        "flagwire ready",
        extra={"instance": app.state.instance_id, "envs": sorted(fanout.feeds), "pid": os.getpid()},
    )
    try:
        yield
    finally:
        fanout.close_all(1001, "server shutting down")

        async def cleanup() -> None:
            await fanout.stop()
            await keys.stop()
            await redis.aclose()

        # A Redis that stopped answering must not hold the exit past the drain time.
        try:
            await asyncio.wait_for(cleanup(), timeout=max(1.0, settings.shutdown_timeout))
        except TimeoutError:
            log.warning(
                "shutdown clean-up timed out; exiting without it",
                extra={"seconds": settings.shutdown_timeout},
            )


async def bootstrap(settings: Settings, redis: aioredis.Redis, store: Any, keys: Any) -> bool:
    """First start of an empty store: create ``production`` and (without
    ``FLAGWIRE_ADMIN_KEY``) an admin key and an SDK key, printed once and
    written to ``<data_dir>/initial-keys.json`` (mode 0600).  Also records the
    store's identity (``P:store``), which the fan-out watches to detect a
    store that came back empty.  Runs under a Redis lock; True when it did
    the work.
    """
    ks = Keyspace(settings.redis_prefix)
    token = secrets.token_hex(8)
    deadline = time.monotonic() + 30
    while not await redis.set(ks.bootstrap_lock, token, nx=True, px=30_000):
        if time.monotonic() > deadline:
            raise RuntimeError("another process holds the bootstrap lock for too long")
        await asyncio.sleep(0.05)
    try:
        await migrate_v1(redis, ks)
        if await redis.hexists(ks.store, "epoch"):
            return False
        envs = await store.list_envs()
        if not envs:
            log.info("empty store: creating environment %r", FIRST_ENV)
            with contextlib.suppress(Exception):
                await store.create_env(FIRST_ENV, "Production")
            if not settings.admin_key:
                await _initial_keys(settings, keys)
        await redis.hset(
            ks.store,
            mapping={
                "epoch": secrets.token_hex(8),
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        return True
    finally:
        if await redis.get(ks.bootstrap_lock) == token.encode():
            await redis.delete(ks.bootstrap_lock)


async def _initial_keys(settings: Settings, keys: Any) -> None:
    admin, admin_secret = await keys.create("initial admin key", "admin", None)
    sdk, sdk_secret = await keys.create(f"{FIRST_ENV} SDK key", "sdk", FIRST_ENV)
    path = Path(settings.data_dir) / INITIAL_KEYS_FILE
    body = orjson.dumps(
        {
            "admin_key": admin_secret,
            "admin_key_id": admin.id,
            "sdk_key": sdk_secret,
            "sdk_key_id": sdk.id,
            "env": FIRST_ENV,
            "note": "shown once; store them elsewhere and delete this file",
        },
        option=orjson.OPT_INDENT_2,
    )
    await asyncio.to_thread(_write_private, path, body)
    # Printed, not logged: log lines are shipped elsewhere and never hold a key.
    print(
        "\n  flagwire: first start — keys generated (shown once, also in "
        f"{path}):\n    admin key:            {admin_secret}\n"
        f"    SDK key ({FIRST_ENV}): {sdk_secret}\n",
        file=sys.stderr,
        flush=True,
    )


def _write_private(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    os.chmod(path, 0o600)
