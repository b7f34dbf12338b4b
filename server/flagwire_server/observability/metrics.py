"""Prometheus metrics of one server process, and the middleware that counts API requests.

With ``--workers N`` each worker is a process of its own: ``flagwire serve``
then sets ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (answered by any
worker) aggregates every worker's figures — counters and histograms summed,
the connected-clients gauge summed over live workers.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flagwire_server.services import services_of

__all__ = ["Metrics", "RequestMetricsMiddleware", "metrics_endpoint"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric flagwire exports, in a registry of its own (so apps can coexist in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected = Gauge(
            "flagwire_connected_clients",
            "Open streams by environment",
            ["env"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.messages_sent = Counter(
            "flagwire_messages_sent", "Frames written to streams", ["env", "type"], registry=r
        )
        self.changes_applied = Counter(
            "flagwire_changes_applied",
            "Changes read from the change log and fanned out",
            ["env"],
            registry=r,
        )
        self.propagation = Histogram(
            "flagwire_propagation_seconds",
            "Commit to client acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fanout_duration = Histogram(
            "flagwire_fanout_seconds",
            "Time to write one change to every local stream",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "flagwire_redis_errors", "Redis operations that failed", ["op"], registry=r
        )
        self.store_reset = Gauge(
            "flagwire_store_reset",
            "1 while an environment's store looks reset or rewound",
            ["env"],
            registry=r,
            multiprocess_mode="max",
        )
        self.resyncs = Counter(
            "flagwire_resyncs",
            "Snapshots sent other than on connect",
            ["env", "reason"],
            registry=r,
        )
        self.disconnects = Counter(
            "flagwire_stream_closes", "Streams closed by the server", ["code"], registry=r
        )
        self.refused = Counter(
            "flagwire_stream_refused", "Stream handshakes refused", ["status"], registry=r
        )
        self.requests = Counter(
            "flagwire_api_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.request_duration = Histogram(
            "flagwire_api_request_seconds",
            "HTTP request duration",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.scheduled_changes = Counter(
            "flagwire_scheduled_changes",
            "Scheduled changes finished by this process, by outcome",
            ["env", "status"],
            registry=r,
        )
        self.release_events = Counter(
            "flagwire_release_events",
            "Release plan events made by this process",
            ["env", "what"],
            registry=r,
        )
        self.guard_checks = Counter(
            "flagwire_release_guard_checks",
            "Release guard checks by outcome (ok, breach, error, waiting: not enough samples)",
            ["env", "outcome"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "flagwire_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retrying, failed, refused),"
            " and events dropped before delivery (dropped)",
            ["env", "outcome"],
            registry=r,
        )
        self.schedule_lateness = Histogram(
            "flagwire_schedule_lateness_seconds",
            "Due time of a scheduled change to the end of its write",
            buckets=(*_LATENCY_BUCKETS, 30.0, 60.0, 300.0),
            registry=r,
        )

        # Fleet insight (stream/reports.py): per-flag series are capped by
        # FLAGWIRE_INSIGHT_METRIC_SERIES; flags past the cap share flag="_other".
        self.insight_summaries = Counter(
            "flagwire_insight_summaries",
            "Client summaries by result (accepted, or the reason one was dropped)",
            ["result"],
            registry=r,
        )
        self.insight_sketches_dropped = Counter(
            "flagwire_insight_sketches_dropped",
            "Distinct-context sketches not kept: the pending cap was reached before a flush",
            registry=r,
        )
        self.flag_evaluations = Counter(
            "flagwire_flag_evaluations",
            "Evaluations reported by clients",
            ["env", "flag", "variation"],
            registry=r,
        )
        self.flag_events = Counter(
            "flagwire_flag_events",
            "Application events reported by clients, by the watched flag's variation",
            ["env", "flag", "variation", "event"],
            registry=r,
        )

    def release_event(self, env: str, what: str) -> None:
        """A release plan's event (started, advanced…, rolled back, paused by a guard)."""
        self.release_events.labels(env, what).inc()

    def webhook_outcome(self, env: str, outcome: str) -> None:
        """The notifier's ``on_outcome``: one attempt's outcome, or a dropped event."""
        self.webhook_deliveries.labels(env, outcome).inc()

    def guard_checked(self, env: str, outcome: str) -> None:
        """A guard check: ``ok``, ``breach``, ``error`` (no data), ``waiting`` (few samples)."""
        self.guard_checks.labels(env, outcome).inc()

    async def schedule_finished(self, env: str, record: dict[str, Any]) -> None:
        """The scheduler's ``on_finish``: count the outcome and the lateness of a write."""
        self.scheduled_changes.labels(env, str(record.get("status"))).inc()
        if record.get("status") == "applied" and isinstance(record.get("lateness_ms"), int):
            self.schedule_lateness.observe(max(0, record["lateness_ms"]) / 1000)

    def exposition(self) -> bytes:
        path = multiprocess_dir()
        if path:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


async def metrics_endpoint(request: Request) -> Response:
    metrics = services_of(request).metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


#: Methods counted under their own name; any other (clients may invent them) is "other".
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of requests no route matched (every unknown path shares it).
UNMATCHED: Final = "<unmatched>"


def _method_of(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in METHODS else "other"


def _route_of(scope: Scope) -> str:
    """The template of the route that answered (``/api/v1/environments/{env}``), never a raw path.

    Labels are bounded by the route table: a label per raw path or method
    would let any client grow ``/metrics`` (and this process) without limit.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):
        return path  # the mount's own prefix (static files), not the file asked for
    # Inside a Mount the route's path is relative; root_path holds the mount's prefix.
    return str(scope.get("root_path", "")) + path


class RequestMetricsMiddleware:
    """Counts HTTP requests by route template, method and status (pure ASGI; WebSockets pass).

    Every label has a bounded set of values: the route table's templates plus
    :data:`UNMATCHED`, the common methods plus "other", and the status codes.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        status = 500
        start = time.perf_counter()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = _route_of(scope)
            metrics.requests.labels(route, _method_of(scope), str(status)).inc()
            metrics.request_duration.labels(route).observe(time.perf_counter() - start)
