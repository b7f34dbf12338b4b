"""What every handler of one server process shares, built once by the app's lifespan.

One typed object on ``app.state.services`` instead of attributes added to
``app.state`` one by one (some lazily, on first use, behind ``getattr``
fallbacks): a handler reads ``services_of(request).store`` and mypy knows
what it gets; nothing is created on first use, so nothing races.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from flagwire_server.api.freshness import VersionReads
    from flagwire_server.api.ratelimit import RateLimiter
    from flagwire_server.config import Settings
    from flagwire_server.notify.notifier import Notifier
    from flagwire_server.observability.metrics import Metrics
    from flagwire_server.release.runner import Releases
    from flagwire_server.release.scheduler import Scheduler
    from flagwire_server.store.apikeys import KeyRing
    from flagwire_server.store.audit import InstanceAudit
    from flagwire_server.store.changelog import ChangeLog
    from flagwire_server.store.documents import Store
    from flagwire_server.store.identity import StoreIdentity
    from flagwire_server.store.keyspace import Keyspace
    from flagwire_server.store.plans import PlanStore
    from flagwire_server.store.schedule import ScheduleStore
    from flagwire_server.store.sessions import SessionStore
    from flagwire_server.store.webhooks import WebhookStore
    from flagwire_server.stream.endpoint import FailureLimiter
    from flagwire_server.stream.fanout import Fanout
    from flagwire_server.stream.quota import StreamQuota
    from flagwire_server.stream.reports import Insight

__all__ = ["Services", "services_of"]


@dataclass(frozen=True, slots=True, eq=False)
class Services:
    """The process's settings, store, key ring, fan-out, metrics and limiters."""

    settings: Settings
    metrics: Metrics
    instance_id: str
    keyspace: Keyspace
    identity: StoreIdentity
    changelog: ChangeLog
    store: Store
    keys: KeyRing
    fanout: Fanout
    #: Failed stream authentications per client IP (429 past ``auth_fail_limit``).
    auth_failures: FailureLimiter
    #: Admin API: requests per key, and failed authentications per IP.
    admin_limiters: tuple[RateLimiter, RateLimiter]
    #: Console sign-in attempts per IP.
    signin_limiter: RateLimiter
    #: OFREP requests per SDK or client-side key (``FLAGWIRE_OFREP_RATE_LIMIT``).
    ofrep_limiter: RateLimiter
    #: Store-version reads shared by concurrent evaluations (read-your-writes).
    versions: VersionReads
    #: Open streams per key and per client address in this process.
    stream_quota: StreamQuota
    #: Console sessions in Redis, and the watcher that closes their streams.
    sessions: SessionStore
    #: The instance-wide audit trail (environments, keys, sign-ins, admin-key rotation).
    audit: InstanceAudit
    #: Signs console cookies and derives their CSRF tokens; never stored in Redis.
    session_secret: bytes
    #: Scheduled changes in Redis, and this process's runner of the due ones.
    schedules: ScheduleStore
    scheduler: Scheduler
    #: Fleet insight: client summaries aggregated here, flushed to Redis, read by the API.
    insight: Insight
    #: Release plans in Redis, and this process's runner of them.
    plans: PlanStore
    releases: Releases
    #: Outgoing webhooks in Redis, and this process's share of their deliveries.
    webhooks: WebhookStore
    notifier: Notifier


def services_of(conn: HTTPConnection) -> Services:
    """The services of the app serving ``conn`` (a request or a WebSocket)."""
    services: Services = conn.app.state.services
    return services
