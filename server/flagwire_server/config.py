"""Server settings: one frozen dataclass, read once from ``FLAGWIRE_*`` variables.

Every variable is listed in ``docs/design.md`` (Configuration) and in
:meth:`Settings.from_env`.  The CLI builds the same object from its options,
then exports it back to the environment for ``--workers`` child processes
(see :meth:`Settings.to_env`), so every process of one server agrees.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from flagwire.core.limits import DEFAULT_HEARTBEAT

__all__ = ["ENV_VARS", "Settings"]

MiB: Final = 1024 * 1024


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a server process needs to know; see ``ENV_VARS`` for the variables."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: ``None``: ``flagwire serve`` starts an embedded Valkey in ``data_dir/valkey``.
    redis_url: str | None = None
    data_dir: Path = Path(".flagwire")
    workers: int = 1
    #: Always accepted as an admin key; when set, no keys are generated on first start.
    admin_key: str | None = None
    redis_prefix: str = "fw"
    #: Browser Origins allowed besides same-origin (``https://app.example.com``, ``*``).
    allowed_origins: tuple[str, ...] = ()
    session_secret: str | None = None
    #: ``json`` or ``console``; ``None`` picks console on a TTY and json otherwise.
    log_format: str | None = None
    log_level: str = "info"
    #: Seconds between keep-alive pings (also announced in ``hello``); also how long a process
    #: may be unable to read the change log before it closes its streams with 1013.
    heartbeat: float = DEFAULT_HEARTBEAT
    #: Seconds without a pong before a connection is dropped.
    ping_timeout: float = 15.0
    #: Outbound bytes a connection may have queued before it is closed with 4000.
    max_buffer: int = MiB
    #: Admin API requests per minute per key (the admin engineer's rate limiter).
    rate_limit: int = 600
    #: OFREP requests per minute per SDK or client-side key (429 past it).
    ofrep_rate_limit: int = 60_000
    #: Failed stream authentications per minute per client IP before 429.
    auth_fail_limit: int = 20
    #: Client messages per second (sustained) before 4003; bursts of 5x are allowed.
    client_msg_rate: float = 50.0
    #: Seconds a stream must leave between two ``resync`` requests; a sooner one closes it
    #: with 4003.  Each resync is answered with a whole snapshot, so without this a few
    #: bytes in would buy megabytes out.
    resync_interval: float = 1.0
    #: Open streams one API key (or console session's key) may hold in this process (429 past it).
    max_streams_per_key: int = 20_000
    #: Open streams one client address may hold in this process (429 past it).
    max_streams_per_ip: int = 5_000
    #: Encoded changes each process keeps per environment for ``since`` resumes.
    ring_size: int = 1000
    #: Seconds SIGTERM waits for streams to close before exiting anyway.
    shutdown_timeout: float = 5.0
    #: Listen backlog (reconnect storms of thousands of clients).
    backlog: int = 4096
    #: Seconds after its due time a scheduled change still runs (a fleet that was down
    #: longer marks it missed instead of making a stale change).
    schedule_grace: float = 300.0
    #: Seconds a server holds a due scheduled change before another may take it over.
    schedule_lease: float = 10.0
    #: Prometheus base URL that release-plan guards query (``http://prometheus:9090``).
    prometheus_url: str | None = None
    #: Days finished scheduled changes and ended release plans are kept.
    release_retention_days: float = 90.0
    #: Seconds one webhook delivery attempt may take (docs/webhooks.md).
    webhook_timeout: float = 10.0
    #: Attempts per webhook delivery, the first included.
    webhook_attempts: int = 6
    #: Seconds before a webhook's second attempt, doubled for each next (at most 5 min).
    webhook_retry_base: float = 2.0
    #: Whether webhooks may call loopback, private and link-local addresses.
    webhook_allow_private: bool = True
    #: Expose ``/metrics`` (Prometheus text).
    metrics: bool = True
    #: Identifies this process in ``P:instances`` and acknowledgement reports.
    instance_id: str = field(default="")
    #: Days fleet-insight aggregates are kept (hourly; minute buckets are kept two days).
    insight_retention_days: int = 30
    #: Seconds between this process's writes of fleet-insight aggregates to Redis.
    insight_flush: float = 5.0
    #: Label sets of the per-flag evaluation and event counters on /metrics; past it
    #: new flags are counted under ``flag="_other"`` (cardinality cap).
    insight_metric_series: int = 1000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``FLAGWIRE_*`` variable (unset ones keep their defaults).

        Args:
            environ: the variables (``os.environ`` by default).
            **overrides: values that win over the environment (CLI options);
                ``None`` values are ignored.

        Raises:
            ValueError: a variable has a value of the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (attr, conv) in ENV_VARS.items():
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[attr] = conv(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ValueError for values no server can run with."""
        if not 0 < self.port < 65536 and self.port != 0:
            raise ValueError(f"port {self.port} is out of range")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.resync_interval < 0:
            raise ValueError("FLAGWIRE_RESYNC_INTERVAL must not be negative")
        if self.max_streams_per_key < 1 or self.max_streams_per_ip < 1:
            raise ValueError(
                "FLAGWIRE_MAX_STREAMS_PER_KEY and FLAGWIRE_MAX_STREAMS_PER_IP must be at least 1"
            )
        if self.rate_limit < 1 or self.auth_fail_limit < 1 or self.ofrep_rate_limit < 1:
            raise ValueError(
                "FLAGWIRE_RATE_LIMIT, FLAGWIRE_OFREP_RATE_LIMIT and FLAGWIRE_AUTH_FAIL_LIMIT"
                " must be at least 1"
            )
        if self.insight_retention_days < 1 or self.insight_flush <= 0:
            raise ValueError(
                "FLAGWIRE_INSIGHT_RETENTION_DAYS must be at least 1 and"
                " FLAGWIRE_INSIGHT_FLUSH positive"
            )
        if self.max_buffer < 4096:
            raise ValueError("FLAGWIRE_MAX_BUFFER must be at least 4096 bytes")
        if self.heartbeat <= 0 or self.ping_timeout <= 0:
            raise ValueError("FLAGWIRE_HEARTBEAT and FLAGWIRE_PING_TIMEOUT must be positive")
        if self.release_retention_days <= 0:
            raise ValueError("FLAGWIRE_RELEASE_RETENTION_DAYS must be positive")
        if self.schedule_grace < 0 or self.schedule_lease <= 0:
            raise ValueError(
                "FLAGWIRE_SCHEDULE_GRACE must not be negative and FLAGWIRE_SCHEDULE_LEASE"
                " must be positive"
            )
        if self.webhook_timeout <= 0 or self.webhook_retry_base < 0:
            raise ValueError(
                "FLAGWIRE_WEBHOOK_TIMEOUT must be positive and FLAGWIRE_WEBHOOK_RETRY_BASE"
                " must not be negative"
            )
        if not 1 <= self.webhook_attempts <= 20:
            raise ValueError("FLAGWIRE_WEBHOOK_ATTEMPTS must be from 1 to 20")
        if self.log_format not in (None, "json", "console"):
            raise ValueError("FLAGWIRE_LOG_FORMAT must be json or console")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} "):
            raise ValueError("FLAGWIRE_REDIS_PREFIX must be non-empty, without braces or spaces")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def json_logs(self) -> bool:
        if self.log_format is None:
            return not sys.stderr.isatty()
        return self.log_format == "json"

    def to_env(self) -> dict[str, str]:
        """The variables that rebuild these settings in another process."""
        out: dict[str, str] = {}
        for name, (attr, _conv) in ENV_VARS.items():
            value = getattr(self, attr)
            if value is None or attr == "instance_id":
                continue
            if isinstance(value, tuple):
                out[name] = ",".join(value)
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        return out

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for a log line (secrets masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("admin_key", "session_secret") and value:
                value = "***"
            elif f.name == "redis_url" and value and "@" in value:
                scheme, _, rest = value.partition("://")
                value = f"{scheme}://***@{rest.rpartition('@')[2]}"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


#: Variable → (Settings attribute, converter).
ENV_VARS: Final[dict[str, tuple[str, Any]]] = {
    "FLAGWIRE_HOST": ("host", str),
    "FLAGWIRE_PORT": ("port", int),
    "FLAGWIRE_REDIS_URL": ("redis_url", str),
    "FLAGWIRE_DATA_DIR": ("data_dir", Path),
    "FLAGWIRE_WORKERS": ("workers", int),
    "FLAGWIRE_ADMIN_KEY": ("admin_key", str),
    "FLAGWIRE_REDIS_PREFIX": ("redis_prefix", str),
    "FLAGWIRE_ALLOWED_ORIGINS": ("allowed_origins", _origins),
    "FLAGWIRE_SESSION_SECRET": ("session_secret", str),
    "FLAGWIRE_LOG_FORMAT": ("log_format", str),
    "FLAGWIRE_LOG_LEVEL": ("log_level", str),
    "FLAGWIRE_HEARTBEAT": ("heartbeat", float),
    "FLAGWIRE_PING_TIMEOUT": ("ping_timeout", float),
    "FLAGWIRE_MAX_BUFFER": ("max_buffer", int),
    "FLAGWIRE_RATE_LIMIT": ("rate_limit", int),
    "FLAGWIRE_OFREP_RATE_LIMIT": ("ofrep_rate_limit", int),
    "FLAGWIRE_AUTH_FAIL_LIMIT": ("auth_fail_limit", int),
    "FLAGWIRE_CLIENT_MSG_RATE": ("client_msg_rate", float),
    "FLAGWIRE_RING_SIZE": ("ring_size", int),
    "FLAGWIRE_RESYNC_INTERVAL": ("resync_interval", float),
    "FLAGWIRE_MAX_STREAMS_PER_KEY": ("max_streams_per_key", int),
    "FLAGWIRE_MAX_STREAMS_PER_IP": ("max_streams_per_ip", int),
    "FLAGWIRE_SHUTDOWN_TIMEOUT": ("shutdown_timeout", float),
    "FLAGWIRE_BACKLOG": ("backlog", int),
    "FLAGWIRE_SCHEDULE_GRACE": ("schedule_grace", float),
    "FLAGWIRE_SCHEDULE_LEASE": ("schedule_lease", float),
    "FLAGWIRE_PROMETHEUS_URL": ("prometheus_url", str),
    "FLAGWIRE_RELEASE_RETENTION_DAYS": ("release_retention_days", float),
    "FLAGWIRE_WEBHOOK_TIMEOUT": ("webhook_timeout", float),
    "FLAGWIRE_WEBHOOK_ATTEMPTS": ("webhook_attempts", int),
    "FLAGWIRE_WEBHOOK_RETRY_BASE": ("webhook_retry_base", float),
    "FLAGWIRE_WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", _bool),
    "FLAGWIRE_METRICS": ("metrics", _bool),
    "FLAGWIRE_INSTANCE_ID": ("instance_id", str),
    "FLAGWIRE_INSIGHT_RETENTION_DAYS": ("insight_retention_days", int),
    "FLAGWIRE_INSIGHT_FLUSH": ("insight_flush", float),
    "FLAGWIRE_INSIGHT_METRIC_SERIES": ("insight_metric_series", int),
}
