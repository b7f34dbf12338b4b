"""Who is calling the admin API: a bearer key or a console session.

Why here and not in each handler: every admin route must refuse the same way
(401 no or unknown key, 403 an SDK key where an admin key is needed, 403 a
session write without its CSRF token, 429 too many requests or too many bad
keys from one address) before it touches the store.  Keys are checked by
:class:`~flagwire_server.store.apikeys.KeyRing` from memory; a browser without a
key is recognised by the console's session reader.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request

from flagwire_server.api.problems import Problem
from flagwire_server.api.ratelimit import RateLimiter
from flagwire_server.services import services_of
from flagwire_server.sessions import read_session
from flagwire_server.store.apikeys import KeyRing

__all__ = ["Principal", "authenticate", "client_ip"]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: its key's id and name (the audit ``actor``), kind and environment."""

    key_id: str
    name: str
    kind: str  # "admin" | "sdk" (a "client" key never reaches the admin API)
    env: str | None
    via: str  # "key" | "session"


def _limiters(conn: HTTPConnection) -> tuple[RateLimiter, RateLimiter]:
    """Per key (``FLAGWIRE_RATE_LIMIT``) and failed keys per IP (``FLAGWIRE_AUTH_FAIL_LIMIT``)."""
    return services_of(conn).admin_limiters


def client_ip(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _too_many(wait: float, what: str) -> Problem:
    return Problem(429, what, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return ""
    return secret.strip()


async def _session(conn: HTTPConnection) -> Any:
    return await read_session(conn)


async def authenticate(request: Request, *, sdk_env: str | None = None) -> Principal:
    """The caller of an admin route, or a :class:`Problem` (401/403/429).

    Args:
        request: the request.
        sdk_env: also accept an SDK key of this environment (``evaluate``).
    """
    keys: KeyRing = services_of(request).keys
    per_key, bad_keys = _limiters(request)
    ip = client_ip(request)
    secret = _bearer(request)
    if secret is None:
        session = await _session(request)
        if session is not None:
            return _from_session(request, keys, session, per_key)
        raise Problem(
            401,
            "missing API key: send Authorization: Bearer <admin key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    wait = bad_keys.blocked(ip)
    if wait:
        raise _too_many(wait, "too many requests with invalid keys from this address")
    record = keys.authenticate(secret) if secret else None
    if record is None:
        bad_keys.take(ip)
        raise Problem(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if record.kind == "client":
        # Shipped inside web pages: it may only evaluate opted-in flags through OFREP.
        raise Problem(
            403,
            "a client-side key can only be used for OFREP evaluation (/ofrep/v1); use an admin key",
        )
    if record.kind != "admin" and not (sdk_env is not None and record.env == sdk_env):
        where = f"environment {sdk_env!r}" if sdk_env else "the admin API"
        raise Problem(403, f"an SDK key cannot be used for {where}; use an admin key")
    wait = per_key.take(record.id)
    if wait:
        raise _too_many(wait, "rate limit exceeded for this key")
    return Principal(record.id, record.name, record.kind, record.env, "key")


def _from_session(request: Request, keys: KeyRing, session: Any, per_key: RateLimiter) -> Principal:
    key_id = str(getattr(session, "key_id", ""))
    record = keys.get(key_id)
    if record is not None and record.revoked_at is not None:
        raise Problem(401, "the key of this console session was revoked; sign in again")
    if request.method in _UNSAFE:
        token = request.headers.get("x-csrf-token", "")
        expected = str(getattr(session, "csrf", ""))
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Problem(403, "missing or wrong X-CSRF-Token for this console session")
    wait = per_key.take(key_id or "session")
    if wait:
        raise _too_many(wait, "rate limit exceeded for this session")
    return Principal(key_id, str(getattr(session, "name", "console")), "admin", None, "session")
