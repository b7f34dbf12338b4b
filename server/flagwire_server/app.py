"""The Starlette application: routes, services and lifespan of one server process.

The lifespan builds one typed :class:`~flagwire_server.services.Services`
(settings, store, key ring, fan-out, metrics, limiters) and puts it on
``app.state.services``; handlers read it with
:func:`~flagwire_server.services.services_of`.

Routes, in order: ``/healthz``, ``/readyz``, ``/metrics``, ``/api/v1/stream``,
OFREP (``/ofrep/v1/...``, with CORS for ``FLAGWIRE_ALLOWED_ORIGINS``), the admin
API (``/api/v1/...``), then the console at ``/``.

The lifespan connects Redis (waiting up to 30 s for it), bootstraps an empty
store once (under a Redis lock, so ``--workers N`` does it once), starts the
key ring and the fan-out, and on shutdown closes every stream with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from flagwire.core.limits import STREAM_PATH
from flagwire_server import console
from flagwire_server.api import routes as admin
from flagwire_server.api.freshness import VersionReads
from flagwire_server.api.problems import exception_handlers
from flagwire_server.api.ratelimit import RateLimiter
from flagwire_server.config import Settings
from flagwire_server.notify.notifier import DeliveryPolicy, Notifier
from flagwire_server.observability import health
from flagwire_server.observability.metrics import Metrics, RequestMetricsMiddleware
from flagwire_server.process import fix_mmap_threshold, freeze_gc, on_exit_signal, raise_nofile
from flagwire_server.release.retention import Retention
from flagwire_server.release.runner import Releases
from flagwire_server.release.scheduler import Scheduler
from flagwire_server.services import Services
from flagwire_server.sessions import load_session_secret
from flagwire_server.store.acks import AckReporter
from flagwire_server.store.apikeys import KeyRing
from flagwire_server.store.audit import InstanceAudit
from flagwire_server.store.changelog import ChangeLog
from flagwire_server.store.documents import Store
from flagwire_server.store.identity import StoreIdentity, open_client
from flagwire_server.store.insight import InsightStore
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.plans import PlanStore
from flagwire_server.store.redisurl import connect
from flagwire_server.store.schedule import ScheduleStore
from flagwire_server.store.sessions import SessionStore
from flagwire_server.store.webhooks import WebhookStore
from flagwire_server.stream import endpoint as stream
from flagwire_server.stream.fanout import Fanout
from flagwire_server.stream.quota import StreamQuota
from flagwire_server.stream.reader import READ_BLOCK_MS
from flagwire_server.stream.reports import Insight

__all__ = ["bootstrap", "create_app", "create_app_from_env"]

log = logging.getLogger("flagwire.app")

#: Console sign-in attempts per minute per client IP.
SIGNIN_PER_MINUTE = 20

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
    routes: list[BaseRoute] = [
        *health.routes(settings.metrics),
        *stream.routes(),
        admin.ofrep_routes(settings.allowed_origins),
        *admin.routes(),
        *console.routes(),
    ]
    return _App(
        routes=routes,
        middleware=[Middleware(RequestMetricsMiddleware, metrics=metrics)],
        exception_handlers=exception_handlers(),
        lifespan=_lifespan(settings, metrics, instance_id),
    )


class _App(Starlette):
    """Starlette, with stream handshakes handed straight to the stream's endpoint.

    Why: the middleware and the router pass a WebSocket through (none acts on
    one: the metrics count HTTP, the error and exception layers have nothing
    for it, the route is an exact path), but Starlette's exception layer and
    its router each wrap the connection again, on every handshake of a
    reconnect storm: ``bench.handshakes`` without this shortcut, alternating,
    0.35-0.36 ms of server CPU per close + resume against 0.32 (2026-12-02).
    Any other path, or a ``root_path``, goes the usual way; the stream's route
    stays in the table for everything that reads it.  A WebSocket middleware
    added to the app would not see streams: add it here too.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "websocket"
            and scope["path"] == STREAM_PATH
            and not scope.get("root_path")
        ):
            scope["app"] = self
            await stream.stream_endpoint(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and ``--workers`` (settings from ``FLAGWIRE_*``)."""
    return create_app(Settings.from_env())


def _lifespan(
    settings: Settings, metrics: Metrics, instance_id: str
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url = settings.redis_url
        assert url is not None
        raise_nofile()
        fix_mmap_threshold()
        redis = await open_client(url)
        keyspace = Keyspace(settings.redis_prefix)
        identity = StoreIdentity(redis, keyspace)
        store = Store(redis, settings.redis_prefix)
        keys = KeyRing(redis, settings.redis_prefix, admin_key=settings.admin_key)
        audit = InstanceAudit(redis, keyspace)
        await bootstrap(settings, identity, store, keys, audit)

        async def env_names() -> list[str]:
            return [str(e["key"]) for e in await store.list_envs()]

        changelog = ChangeLog(redis, keyspace)
        sessions = SessionStore(redis, settings.redis_prefix)
        fanout = Fanout(
            settings,
            changelog=changelog,
            reporter=AckReporter(redis, keyspace, instance_id),
            load_env=store.load_env,
            list_envs=env_names,
            metrics=metrics,
            # Each reader blocks in XREAD on a connection of its own.
            reader_changelog=lambda: ChangeLog(
                connect(url, socket_timeout=READ_BLOCK_MS / 1000 + 1, health_check_interval=0),
                keyspace,
            ),
        )
        webhooks = WebhookStore(redis, keyspace)
        notifier = Notifier(
            webhooks,
            owner=instance_id,
            policy=DeliveryPolicy(
                timeout=settings.webhook_timeout,
                attempts=settings.webhook_attempts,
                retry_base=settings.webhook_retry_base,
                allow_private=settings.webhook_allow_private,
            ),
            on_outcome=metrics.webhook_outcome,
            # One blocking read over every watched environment, on a connection of its own.
            waiter=WebhookStore(
                connect(url, socket_timeout=READ_BLOCK_MS / 1000 + 1, health_check_interval=0),
                keyspace,
            ),
        )

        async def schedule_finished(env: str, record: dict[str, Any]) -> None:
            await metrics.schedule_finished(env, record)
            await notifier.schedule_finished(env, record)

        schedules = ScheduleStore(redis, keyspace)
        scheduler = Scheduler(
            store,
            schedules,
            owner=instance_id,
            wait_for=fanout.wait_for,
            grace=settings.schedule_grace,
            lease=settings.schedule_lease,
            on_finish=schedule_finished,
        )
        insight_store = InsightStore(redis, keyspace, settings.insight_retention_days)
        insight = Insight(
            insight_store,
            metrics,
            lambda: fanout.feeds,
            instance_id=instance_id,
            flush_interval=settings.insight_flush,
            max_series=settings.insight_metric_series,
        )
        plans = PlanStore(redis, keyspace)
        releases = Releases(
            store,
            plans,
            owner=instance_id,
            wait_for=fanout.wait_for,
            prometheus_url=settings.prometheus_url,
            insight=insight_store,
            on_event=metrics.release_event,
            on_guard=metrics.guard_checked,
            retention=Retention(
                schedules, plans, env_names, keep_days=settings.release_retention_days
            ),
            on_plan_event=notifier.plan_event,
        )
        app.state.services = Services(
            settings=settings,
            metrics=metrics,
            instance_id=instance_id,
            keyspace=keyspace,
            identity=identity,
            changelog=changelog,
            store=store,
            keys=keys,
            fanout=fanout,
            auth_failures=stream.FailureLimiter(settings.auth_fail_limit),
            admin_limiters=(
                RateLimiter.per_minute(settings.rate_limit),
                RateLimiter.per_minute(settings.auth_fail_limit),
            ),
            signin_limiter=RateLimiter.per_minute(SIGNIN_PER_MINUTE),
            ofrep_limiter=RateLimiter.per_minute(settings.ofrep_rate_limit),
            versions=VersionReads(),
            sessions=sessions,
            stream_quota=StreamQuota(settings.max_streams_per_key, settings.max_streams_per_ip),
            audit=audit,
            session_secret=await asyncio.to_thread(load_session_secret, settings),
            schedules=schedules,
            scheduler=scheduler,
            insight=insight,
            plans=plans,
            releases=releases,
            webhooks=webhooks,
            notifier=notifier,
        )
        await keys.start()
        await sessions.start()
        keys.on_revoke(fanout.revoke)
        await fanout.start()
        # After the fan-out: an execution waits for acknowledgements through it.
        scheduler.start()
        await insight.start()
        releases.start_loop()
        notifier.start()
        freeze_gc()
        # uvicorn drains open responses before the code after ``yield`` runs: end the
        # event streams (which never end by themselves) as soon as the exit is asked.
        on_exit_signal(fanout.end_event_streams)
        log.info(
            "flagwire ready",
            extra={"instance": instance_id, "envs": sorted(fanout.feeds), "pid": os.getpid()},
        )
        try:
            yield
        finally:
            fanout.close_all(1001, "server shutting down")

            async def cleanup() -> None:
                await scheduler.stop()
                await insight.stop()
                await releases.stop()
                await notifier.stop()
                await fanout.stop()
                await sessions.stop()
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

    return lifespan


async def bootstrap(
    settings: Settings,
    identity: StoreIdentity,
    store: Store,
    keys: KeyRing,
    audit: InstanceAudit,
) -> bool:
    """First start of an empty store: create ``production`` and (without
    ``FLAGWIRE_ADMIN_KEY``) an admin key and an SDK key, printed once and
    written to ``<data_dir>/initial-keys.json`` (mode 0600).  Also records the
    store's identity, which the fan-out watches to detect a store that came
    back empty.  Runs under a Redis lock; True when it did the work.
    """
    async with identity.bootstrap_lock():
        await identity.migrate_v1()
        await audit.note_admin_key(settings.admin_key, address=socket.gethostname())
        if await identity.exists():
            return False
        envs = await store.list_envs()
        if not envs:
            log.info("empty store: creating environment %r", FIRST_ENV)
            with contextlib.suppress(Exception):
                await store.create_env(FIRST_ENV, "Production")
            if not settings.admin_key:
                await _initial_keys(settings, keys, audit)
        await identity.create()
        return True


async def _initial_keys(settings: Settings, keys: KeyRing, audit: InstanceAudit) -> None:
    admin, admin_secret = await keys.create("initial admin key", "admin", None)
    sdk, sdk_secret = await keys.create(f"{FIRST_ENV} SDK key", "sdk", FIRST_ENV)
    for made in (admin, sdk):
        await audit.record(
            actor="flagwire serve (first start)",
            action="create",
            kind="key",
            key=made.id,
            address=socket.gethostname(),
            detail={"name": made.name, "kind": made.kind, "env": made.env},
        )
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
