"""``/api/v1/stream``: the WebSocket every client holds open.

Handshake (all before ``accept``; a refusal is an HTTP response with a JSON
problem body, never an accepted-then-closed socket):

1. ``Origin``: browsers send one; it must be same-origin (its host equals the
   ``Host`` header) or listed in ``FLAGWIRE_ALLOWED_ORIGINS`` (403).  Other
   clients send none and pass.
2. Too many failed authentications from this IP in the last minute: 429.
3. ``Authorization: Bearer <key>``: an SDK key streams its environment; an
   admin key or a console session must name one with ``?env=`` (401 unknown
   key, 403 wrong kind, 404 unknown environment).
4. ``?since=<version>&epoch=<epoch>`` asks to resume.

Then ``hello`` and the snapshot (or only the missed changes) are written and
the stream is registered with the environment's feed in one synchronous step
(:meth:`flagwire_server.stream.feed.EnvFeed.attach`), and the endpoint only reads:
``ack`` and ``resync`` messages, and the fleet-insight ``identify`` and
``summary`` (handed to :mod:`flagwire_server.stream.reports`); anything else
closes the stream (see ``docs/protocol.md`` for codes).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from flagwire.core.errors import ProtocolError
from flagwire.core.limits import MAX_CLIENT_FRAME, STREAM_PATH
from flagwire.core.protocol import Ack, CloseCode, Identify, Resync, Summary, ack_version, decode
from flagwire.core.reports import MAX_SUMMARY_FRAME
from flagwire_server.config import Settings
from flagwire_server.observability.refusals import RefusalLog
from flagwire_server.services import services_of
from flagwire_server.sessions import read_session
from flagwire_server.stream.conn import Conn
from flagwire_server.stream.feed import EnvFeed, EnvNotFound
from flagwire_server.stream.reports import Insight
from flagwire_server.stream.uvicorn_fence import (
    FlagwireWebSocketProtocol,
    accept_now,
    protocol_of,
)

__all__ = ["FailureLimiter", "origin_allowed", "routes", "stream_endpoint"]

log = logging.getLogger("flagwire.stream")

_MAX_REASON: Final = 123  # bytes: the limit of a close frame's reason
#: Refusals are answers, not faults: info, and one line per second under a flood.
_refusals: Final = RefusalLog(log)


class FailureLimiter:
    """Failed authentications per client IP in a sliding minute (bounded memory)."""

    def __init__(self, limit: int, window: float = 60.0, max_ips: int = 10_000) -> None:
        self.limit, self.window, self.max_ips = limit, window, max_ips
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        q = self._fails.get(ip)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[ip]
            return None
        return q

    def blocked(self, ip: str) -> bool:
        q = self._recent(ip, time.monotonic())
        return q is not None and len(q) >= self.limit

    def fail(self, ip: str) -> None:
        now = time.monotonic()
        q = self._recent(ip, now)
        if q is None:
            q = self._fails[ip] = deque(maxlen=self.limit + 1)
            while len(self._fails) > self.max_ips:
                self._fails.popitem(last=False)
        q.append(now)


def origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Same-origin (Origin's host:port equals Host) or listed (``*`` allows any)."""
    if "*" in allowed:
        return True
    origin = origin.strip().rstrip("/").lower()
    if origin != "null":
        netloc = urlsplit(origin).netloc
        if host and netloc and netloc == host.strip().lower():
            return True
    return origin in {a.lower() for a in allowed}


def _reason(text: str) -> str:
    return text.encode()[:_MAX_REASON].decode(errors="ignore")


async def _deny(ws: WebSocket, status: int, code: str, detail: str) -> None:
    """Refuse the handshake with an HTTP response: ``status`` and an RFC 9457 problem body.

    The client shows ``detail`` to its user and decides from ``status``
    whether retrying can help (429/503 say when in ``Retry-After``).
    """
    services_of(ws).metrics.refused.labels(str(status)).inc()
    _refusals.record(status, code, ws.client.host if ws.client else "?", detail)
    titles = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        429: "Too Many Requests",
        503: "Service Unavailable",
    }
    body = {
        "type": "about:blank",
        "title": titles.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    headers = (
        {"Retry-After": "60"} if status == 429 else {"Retry-After": "1"} if status == 503 else None
    )
    await ws.send_denial_response(
        JSONResponse(
            body, status_code=status, headers=headers, media_type="application/problem+json"
        )
    )


async def _read_session(ws: WebSocket) -> Any:
    return await read_session(ws)


async def stream_endpoint(ws: WebSocket) -> None:
    state = services_of(ws)
    settings = state.settings
    ip = ws.client.host if ws.client else "?"
    limiter: FailureLimiter = state.auth_failures

    origin = ws.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, ws.headers.get("host"), settings.allowed_origins
    ):
        return await _deny(ws, 403, "forbidden_origin", "this Origin may not open streams")
    if limiter.blocked(ip):
        return await _deny(
            ws, 429, "rate_limited", "too many failed authentications; try again in a minute"
        )

    auth = ws.headers.get("authorization")
    key_id: str
    kind: str
    key_env: str | None = None
    session_hash: str | None = None
    if auth is not None:
        scheme, _, secret = auth.strip().partition(" ")
        record = None
        if scheme.lower() == "bearer" and secret.strip():
            record = state.keys.authenticate(secret.strip())
        if record is None:
            limiter.fail(ip)
            return await _deny(ws, 401, "unauthorized", "unknown or revoked key")
        key_id, kind, key_env = str(record.id), str(record.kind), record.env
    else:
        try:
            session = await _read_session(ws)
        except Exception:
            return await _deny(ws, 503, "unavailable", "sessions are unavailable; retry")
        if session is None:
            limiter.fail(ip)
            return await _deny(
                ws, 401, "unauthorized", "send the SDK key as 'Authorization: Bearer <key>'"
            )
        key_id, kind = str(session.key_id), "admin"
        session_hash = session.sid_hash

    query_env = ws.query_params.get("env") or None
    if kind == "sdk":
        if not key_env:
            return await _deny(ws, 403, "forbidden", "this SDK key has no environment")
        if query_env is not None and query_env != key_env:
            return await _deny(
                ws, 403, "forbidden", f"this SDK key belongs to environment {key_env!r}"
            )
        env = key_env
    elif kind == "admin":
        if query_env is None:
            return await _deny(
                ws, 400, "env_required", "an admin key or console session must pass ?env=NAME"
            )
        env = query_env
    else:
        return await _deny(ws, 403, "forbidden", f"a {kind} key cannot open streams")

    since: int | None = None
    epoch = ws.query_params.get("epoch")
    raw_since = ws.query_params.get("since")
    if raw_since is not None:
        if not raw_since.isdigit() or len(raw_since) > 18:
            return await _deny(ws, 400, "bad_request", "since must be a non-negative integer")
        since = int(raw_since)

    fanout = state.fanout
    try:
        feed = await fanout.ensure(env)
    except EnvNotFound:
        return await _deny(ws, 404, "not_found", f"environment {env!r} does not exist")
    except Exception as exc:
        log.warning("stream refused: store unavailable", extra={"env": env, "error": str(exc)})
        return await _deny(ws, 503, "unavailable", "the flag store is unavailable; retry")

    if feed.stale:
        return await _deny(
            ws, 503, "unavailable", "this server cannot reach the flag store; retry (elsewhere)"
        )

    quota = state.stream_quota
    over = quota.admit(key_id, ip)
    if over is not None:
        return await _deny(ws, 429, "too_many_streams", over)
    try:
        await _stream(ws, feed, key_id, since, epoch, session_hash, _Limits.of(settings))
    finally:
        quota.release(key_id, ip)


@dataclass(frozen=True, slots=True)
class _Limits:
    """What one stream may send: messages per second (burst 5x) and how often to resync."""

    rate: float
    burst: float
    resync_interval: float

    @classmethod
    def of(cls, settings: Settings) -> _Limits:
        rate = settings.client_msg_rate
        return cls(rate, max(1.0, rate * 5), settings.resync_interval)


async def _stream(
    ws: WebSocket,
    feed: EnvFeed,
    key_id: str,
    since: int | None,
    epoch: str | None,
    session_hash: str | None,
    limits: _Limits,
) -> None:
    """Accept, attach to the feed and read the client's messages until it goes."""
    state = services_of(ws)
    # The 101 goes out with hello in one write where the protocol allows it.
    head = accept_now(ws)
    if head is None:
        await ws.accept()
        head = b""
    proto = protocol_of(ws)
    # Fallback when the transport is not reachable (not flagwire's uvicorn protocol):
    # frames then go through ws.send_text via a bounded per-connection queue.
    conn = Conn(key_id, proto, ws=None if proto is not None else ws)
    if state.fanout.feed(feed.env) is not feed:  # deleted while we accepted
        if head:
            conn.write(head)
        conn.closed = True
        await ws.close(CloseCode.RESYNC, "environment deleted")
        return
    feed.attach(conn, since, epoch, head)
    # A console stream ends with its session (signed out anywhere, or expired).
    unwatch = (
        state.sessions.watch(
            session_hash,
            lambda: feed.close(conn, CloseCode.UNAUTHORIZED, "console session ended"),
        )
        if session_hash is not None
        else None
    )
    conn.tokens, conn.stamp = limits.burst, time.monotonic()
    if isinstance(proto, FlagwireWebSocketProtocol):
        # Fast path: the protocol hands each client frame to on_message as it is
        # parsed, skipping the ASGI queue, the task wake-up and pause/resume of
        # reading per message; acks from every client after a change are the
        # server's largest cost after the fan-out itself (bench/results).
        proto.on_message = lambda data: _handle(feed, conn, data, limits, state.insight)
    try:
        await _read_loop(ws, feed, conn, limits, state.insight)
    finally:
        if isinstance(proto, FlagwireWebSocketProtocol):
            proto.on_message = None
        if unwatch is not None:
            unwatch()
        feed.detach(conn)
        conn.closed = True


_SUMMARY_PREFIX: Final = '{"type":"summary"'


def _handle(
    feed: EnvFeed, conn: Conn, data: str | bytes, limits: _Limits, insight: Insight
) -> None:
    """Act on one client frame: rate limit, decode, ack / resync / insight / close."""
    if conn.closed:
        return
    now = time.monotonic()
    conn.tokens = min(limits.burst, conn.tokens + (now - conn.stamp) * limits.rate)
    conn.stamp = now
    if conn.tokens < 1.0:
        feed.close(conn, CloseCode.RATE_LIMITED, "too many messages")
        return
    conn.tokens -= 1.0
    if type(data) is bytes:
        # The frame every client sends after every change, without the generic decode.
        version = ack_version(data)
        if version is not None:
            feed.ack(conn, version)
            return
    size = len(data)
    # Only a summary may be bigger than MAX_CLIENT_FRAME, and a bad one is dropped,
    # not fatal: the prefix says which without parsing (summaries are encoded type first).
    summary = (
        data.startswith(_SUMMARY_PREFIX)
        if isinstance(data, str)
        else data.startswith(_SUMMARY_PREFIX.encode())
    )
    if size > MAX_CLIENT_FRAME and not summary:
        feed.close(
            conn, CloseCode.MESSAGE_TOO_BIG, f"frames are limited to {MAX_CLIENT_FRAME} bytes"
        )
        return
    if summary and size > MAX_SUMMARY_FRAME:
        insight.drop("oversized")
        return
    if summary and not insight.admit():  # the process's budget for summaries is spent
        return
    try:
        msg = decode(data, max_size=MAX_SUMMARY_FRAME)
    except ProtocolError as exc:
        if summary:
            insight.drop("invalid")
            return
        feed.close(conn, CloseCode.BAD_MESSAGE, _reason(str(exc)))
        return
    if isinstance(msg, Ack):
        feed.ack(conn, msg.version)
    elif isinstance(msg, Resync):
        # Each resync costs a whole snapshot out: one per interval, or a few
        # bytes in would buy megabytes out (issue 10, item 8).
        if conn.snapshot_at and now - conn.snapshot_at < limits.resync_interval:
            feed.close(
                conn,
                CloseCode.RATE_LIMITED,
                f"too many resyncs: at most one per {limits.resync_interval:g}s",
            )
            return
        conn.snapshot_at = now
        feed.resnapshot(conn, "client")
    elif isinstance(msg, Identify | Summary):
        insight.receive(feed, conn, msg, size)
    else:
        feed.close(conn, CloseCode.BAD_MESSAGE, _reason(f"a client may not send {msg.type}"))


async def _read_loop(
    ws: WebSocket, feed: EnvFeed, conn: Conn, limits: _Limits, insight: Insight
) -> None:
    # With the fast path installed only the disconnect arrives here.
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        _handle(feed, conn, data, limits, insight)


def routes() -> list[WebSocketRoute]:
    return [WebSocketRoute(STREAM_PATH, stream_endpoint, name="stream")]
