"""OFREP: OpenFeature's remote evaluation protocol, served from this process's mirror.

Why: every OpenFeature SDK (Go, Java, .NET, Node, the web, mobile...) has an
OFREP provider, so these few routes make each of them a flagwire client.
What the answers look like is in :mod:`flagwire_server.api.ofrep_wire`;
this module authenticates, reads the context, evaluates on the same compiled
snapshot as ``POST /api/v1/environments/{env}/evaluate`` (read-your-writes) and
serves the change notifications.

Routes (under ``/ofrep/v1``; CORS for ``FLAGWIRE_ALLOWED_ORIGINS``):

* ``POST /evaluate/flags/{key}``: one flag (404 ``FLAG_NOT_FOUND``, 400 with an
  OFREP ``errorCode``);
* ``POST /evaluate/flags``: every flag the key may see, with an ``ETag``
  (``If-None-Match`` answered 304 when nothing changed for that context) and
  ``eventStreams`` (ADR-0008, proposed) pointing at
* ``GET /events``: Server-Sent Events, one ``refetchEvaluation`` per change;
* ``GET /configuration``: the capabilities.

Keys: an SDK key (server-side callers) sees every flag of its environment; a
client-side key (``kind: "client"``, safe to ship in a web page) sees only flags
with ``client_side: true``: others are ``FLAG_NOT_FOUND``, as if absent.
Admin keys are refused (403): OFREP has no way to name an environment.
Refusals are RFC 9457 problems that also carry OFREP's ``errorCode`` and
``errorDetails``, so both kinds of client read them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from flagwire_server.api.auth import client_ip
from flagwire_server.api.evaluation import current_snapshot
from flagwire_server.api.helpers import MAX_JSON_DEPTH
from flagwire_server.api.ofrep_wire import (
    ERROR_STATUS,
    BulkCache,
    etag_matches,
    etag_of,
    flagwire_context,
    is_visible,
    ofrep_result,
)
from flagwire_server.api.problems import Problem, problem_response
from flagwire_server.services import services_of
from flagwire_server.store.apikeys import KeyRecord
from flagwire_server.store.documents import NotFound, StoreUnavailable
from flagwire_server.stream.fanout import EnvNotFound
from flagwire_server.stream.ofrep_events import event_id, refetch_event

__all__ = [
    "MAX_CONTEXT_ATTRIBUTES",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_DEPTH",
    "bulk",
    "configuration",
    "events",
    "single",
]

#: Largest request body (the context) of an evaluation, in bytes (413 past it).
MAX_CONTEXT_BYTES: Final = 32 * 1024
#: Most attributes at the top of a context (400 ``INVALID_CONTEXT`` past it).
MAX_CONTEXT_ATTRIBUTES: Final = 256
#: Deepest nesting of objects and arrays in a context.
MAX_CONTEXT_DEPTH: Final = 16
#: Seconds a hidden browser tab keeps its event stream (told to the provider).
INACTIVITY_DELAY_S: Final = 120
#: Polling interval floor announced by ``/configuration``, in milliseconds.
MIN_POLL_MS: Final = 1000
_NO_STORE: Final = {"Cache-Control": "private, no-cache"}
_RETRY: Final = {"Retry-After": "1"}
#: This process's recent bulk answers (a pure function of version and context; bounded).
_BULK: Final = BulkCache()


def _refusal(status: int, detail: str, code: str = "GENERAL", **kw: Any) -> Problem:
    return Problem(status, detail, errorCode=code, errorDetails=detail, **kw)


def _secret(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.strip().partition(" ")
        return secret.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


def _check_key(request: Request, record: KeyRecord | None) -> KeyRecord:
    services = services_of(request)
    if record is None:
        services.admin_limiters[1].take(client_ip(request))
        raise _refusal(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if record.kind == "admin" or record.env is None:
        raise _refusal(
            403,
            "OFREP takes an SDK key or a client-side key of the environment, not an admin key",
        )
    wait = services.ofrep_limiter.take(record.id)
    if wait:
        raise _refusal(
            429,
            "rate limit exceeded for this key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return record


def _authenticate(request: Request) -> KeyRecord:
    """The caller's SDK or client-side key (401 missing/unknown, 403 admin, 429 too many)."""
    services = services_of(request)
    wait = services.admin_limiters[1].blocked(client_ip(request))
    if wait:
        raise _refusal(
            429,
            "too many requests with invalid keys from this address",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    secret = _secret(request)
    if not secret:
        raise _refusal(
            401,
            "missing API key: send Authorization: Bearer <SDK or client-side key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _check_key(request, services.keys.authenticate(secret))


async def _context(request: Request) -> dict[str, Any]:
    """The request's ``context`` as flagwire evaluates it; refusals say which limit."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_CONTEXT_BYTES):
        raise _refusal(413, f"request body over the limit of {MAX_CONTEXT_BYTES} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_CONTEXT_BYTES:
            raise _refusal(413, f"request body over the limit of {MAX_CONTEXT_BYTES} bytes")
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _refusal(400, f"the body is not valid JSON: {exc}", "PARSE_ERROR") from None
    if not isinstance(body, dict):
        raise _refusal(400, 'expected an object {"context": {...}}', "INVALID_CONTEXT")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise _refusal(400, "context must be an object", "INVALID_CONTEXT")
    if len(context) > MAX_CONTEXT_ATTRIBUTES:
        raise _refusal(
            400,
            f"context has {len(context)} attributes; at most {MAX_CONTEXT_ATTRIBUTES}",
            "INVALID_CONTEXT",
        )
    if _depth_over(context, min(MAX_CONTEXT_DEPTH, MAX_JSON_DEPTH)):
        raise _refusal(
            400, f"context nests deeper than {MAX_CONTEXT_DEPTH} levels", "INVALID_CONTEXT"
        )
    ctx = flagwire_context(context)
    if "key" not in ctx or ctx["key"] is None:
        raise _refusal(400, "the context needs a targetingKey (or key)", "TARGETING_KEY_MISSING")
    if not isinstance(ctx["key"], str):
        raise _refusal(400, "targetingKey must be a string", "INVALID_CONTEXT")
    return ctx


def _depth_over(data: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children: Any = value.values() if isinstance(value, dict) else value
        if not isinstance(value, dict | list):
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


async def _snapshot(request: Request, env: str) -> Any:
    try:
        return await current_snapshot(request, env)
    except (NotFound, EnvNotFound):
        raise _refusal(403, f"the environment {env!r} of this key no longer exists") from None
    except StoreUnavailable:
        raise _refusal(
            503, "store unavailable and this environment is not cached", headers=_RETRY
        ) from None
    except Problem as problem:
        if problem.status == 404:
            raise _refusal(403, f"the environment {env!r} of this key no longer exists") from None
        raise


def _json(data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        data,
        status_code=status,
        headers={**_NO_STORE, **(headers or {})},
        media_type="application/json",
    )


async def _guard(request: Request, handler: Any) -> Response:
    try:
        response: Response = await handler(request)
        return response
    except Problem as problem:
        return problem_response(problem)


async def single(request: Request) -> Response:
    """``POST /ofrep/v1/evaluate/flags/{key}``."""

    async def run(request: Request) -> Response:
        record = _authenticate(request)
        assert record.env is not None
        key = str(request.path_params["key"])
        context = await _context(request)
        snap = await _snapshot(request, record.env)
        doc = snap.flags.get(key)
        if doc is not None and not is_visible(doc, record.kind == "client"):
            doc = None
        result = ofrep_result(key, snap.evaluate(key, context, None), doc)
        status = ERROR_STATUS.get(result.get("errorCode", ""), 200)
        return _json(orjson.dumps(result), status)

    return await _guard(request, run)


async def bulk(request: Request) -> Response:
    """``POST /ofrep/v1/evaluate/flags``: every visible flag; 304 when unchanged for the context."""

    async def run(request: Request) -> Response:
        record = _authenticate(request)
        assert record.env is not None
        context = await _context(request)
        snap = await _snapshot(request, record.env)
        streams = [
            {
                "type": "sse",
                "url": _events_url(request, record, event_id(snap.epoch, snap.version)),
                "inactivityDelaySec": INACTIVITY_DELAY_S,
            }
        ]
        body, etag = _BULK.answer(
            snap, context, client_side=record.kind == "client", event_streams=streams
        )
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={**_NO_STORE, "ETag": etag})
        return _json(body, headers={"ETag": etag})

    return await _guard(request, run)


_CONFIGURATION: Final = orjson.dumps(
    {
        "name": "flagwire",
        "capabilities": {
            "cacheInvalidation": {
                "polling": {"enabled": True, "minPollingIntervalMs": MIN_POLL_MS}
            },
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
        },
    }
)
_CONFIGURATION_ETAG: Final = etag_of(_CONFIGURATION)


async def configuration(request: Request) -> Response:
    """``GET /ofrep/v1/configuration``: what this server supports (with an ETag)."""

    async def run(request: Request) -> Response:
        _authenticate(request)
        if etag_matches(request.headers.get("if-none-match"), _CONFIGURATION_ETAG):
            return Response(status_code=304, headers={"ETag": _CONFIGURATION_ETAG})
        return _json(_CONFIGURATION, headers={"ETag": _CONFIGURATION_ETAG})

    return await _guard(request, run)


# --- change notifications ------------------------------------------------------


def _token_of(request: Request, key_id: str) -> str:
    """An event-stream token for ``key_id``: the key's id and a MAC, never the key.

    Why a token: a browser's ``EventSource`` cannot send an ``Authorization``
    header, so the stream URL carries its credential.  The token only opens the
    change notifications of the key's environment (no flag, value or rule), and
    dies with the key: a revoked key's token is refused and its streams close.
    """
    secret = hmac.new(services_of(request).session_secret, b"ofrep-events", hashlib.sha256)
    mac = hmac.new(secret.digest(), key_id.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{key_id}.{mac}"


def _events_url(request: Request, record: KeyRecord, since: str) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/ofrep/v1/events?token={_token_of(request, record.id)}&since={since}"


def _events_key(request: Request) -> KeyRecord:
    token = request.query_params.get("token")
    if token is None:
        return _authenticate(request)
    key_id, _, _mac = token.partition(".")
    services = services_of(request)
    record = None
    if hmac.compare_digest(token.encode(), _token_of(request, key_id[:100]).encode()):
        record = services.keys.get(key_id)
        if record is not None and record.revoked_at is not None:
            record = None
    return _check_key(request, record)


async def events(request: Request) -> Response:
    """``GET /ofrep/v1/events``: one ``refetchEvaluation`` event per change of the key's env.

    A client that connects (or reconnects, with ``Last-Event-ID``) behind the
    current version is told to re-fetch at once, so nothing between its last
    bulk evaluation and this stream is missed.
    """

    async def run(request: Request) -> Response:
        record = _events_key(request)
        env = record.env
        assert env is not None
        services = services_of(request)
        try:
            feed = await services.fanout.ensure(env)
        except EnvNotFound:
            raise _refusal(403, f"the environment {env!r} of this key no longer exists") from None
        except StoreUnavailable:
            raise _refusal(503, "store unavailable", headers=_RETRY) from None
        seen = request.headers.get("last-event-id") or request.query_params.get("since")
        heartbeat = services.settings.heartbeat
        # Event streams count against the same per-key and per-address caps as WebSockets.
        ip = client_ip(request)
        over = services.stream_quota.admit(record.id, ip)
        if over is not None:
            raise _refusal(429, over, headers={"Retry-After": "5"})

        async def stream() -> AsyncIterator[bytes]:
            # Registered and compared in one step (no await between): a change is
            # either behind ``seen`` or notified below, never neither.
            listener = feed.listeners.add(record.id)
            try:
                yield b"retry: 1000\n: flagwire OFREP change notifications\n\n"
                if seen != event_id(feed.epoch, feed.version):
                    yield refetch_event(feed.epoch, feed.version)
                while True:
                    event = await listener.next(heartbeat)
                    if event is None:
                        yield b": ping\n\n"
                    elif not event:
                        return
                    else:
                        yield event
            finally:
                feed.listeners.discard(listener)

        return _EventStream(
            stream(),
            on_close=lambda: services.stream_quota.release(record.id, ip),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return await _guard(request, run)


class _EventStream(StreamingResponse):
    """A streaming response that runs ``on_close`` once it ends, however it ends.

    (A generator's ``finally`` does not run when the client left before the first
    chunk: the quota count would leak.)
    """

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Any, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
