"""Console sessions: an admin key exchanged once for a signed, server-side session.

Why server-side: the admin key must never live in the browser, and signing out
(or revoking the key) must make a copied cookie useless.  So the cookie only
carries a random session id, signed with itsdangerous so a guessed id is
refused before Redis is asked; the session itself — ``{key_id, name, csrf}`` —
lives in Redis under ``P:sessions:<sid>`` with a TTL and is deleted on sign-out.

CSRF: the cookie is ``SameSite=Strict``, and every unsafe request must also
carry the session's random ``csrf`` token in ``X-CSRF-Token`` (the pages render
it into a ``<meta>`` tag).  The sign-in form, which has no session yet, is
protected by an Origin check plus a double-submit token (cookie == field).

``read_session`` is what the admin API (``auth.py``) and the stream call for
requests without an ``Authorization`` header.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from flagwire_server.services import services_of
from flagwire_server.store.types import as_str

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "SESSION_TTL",
    "Session",
    "create_session",
    "delete_session",
    "read_session",
    "same_origin",
]

COOKIE: Final = "fw_session"
#: The double-submit token of the sign-in form (no session exists yet).
LOGIN_COOKIE: Final = "fw_login"
#: Seconds a session lives (also the cookie's and the signature's max age).
SESSION_TTL: Final = 12 * 3600
_SALT: Final = "flagwire.console.session"
_ENV_ADMIN_ID: Final = "admin-env"  # keys.ENV_ADMIN_ID, kept literal to avoid a cycle


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user: the admin key's id and name, and the CSRF token."""

    sid: str
    key_id: str
    name: str
    csrf: str
    created_at: float

    def csrf_ok(self, token: str | None) -> bool:
        """True when ``token`` is this session's CSRF token (constant time)."""
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf.encode())


def _prefix(conn: HTTPConnection) -> str:
    return services_of(conn).settings.redis_prefix


def _redis(conn: HTTPConnection) -> Any:
    return services_of(conn).redis


def _key(conn: HTTPConnection, sid: str) -> str:
    return f"{_prefix(conn)}:sessions:{sid}"


async def _secret(conn: HTTPConnection) -> str:
    """``FLAGWIRE_SESSION_SECRET``, or one random secret shared by all processes via Redis."""
    configured = services_of(conn).settings.session_secret
    if configured:
        return str(configured)
    cached: str | None = getattr(conn.app.state, "console_secret", None)
    if cached:
        return cached
    redis = _redis(conn)
    name = f"{_prefix(conn)}:console:secret"
    await redis.set(name, secrets.token_urlsafe(32), nx=True)
    secret = as_str(await redis.get(name))
    conn.app.state.console_secret = secret
    return secret


async def _serializer(conn: HTTPConnection) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(await _secret(conn), salt=_SALT)


def _key_alive(conn: HTTPConnection, key_id: str) -> bool:
    keys = services_of(conn).keys
    if key_id == _ENV_ADMIN_ID:
        return getattr(keys, "admin_key", None) is not None
    record = keys.get(key_id)
    return record is not None and record.revoked_at is None and record.kind == "admin"


async def read_session(conn: HTTPConnection) -> Session | None:
    """The console session of a request or WebSocket, or None.

    None when there is no cookie, its signature is bad or expired, the session
    was signed out (gone from Redis) or its admin key was revoked.  Never raises
    for bad input; a Redis outage propagates as redis' own error.
    """
    raw = conn.cookies.get(COOKIE)
    if not raw or len(raw) > 512:
        return None
    try:
        sid = (await _serializer(conn)).loads(raw, max_age=SESSION_TTL)
    except BadSignature:
        return None
    if not isinstance(sid, str):
        return None
    stored = await _redis(conn).get(_key(conn, sid))
    if stored is None:
        return None
    try:
        data = orjson.loads(stored)
        session = Session(
            sid=sid,
            key_id=str(data["key_id"]),
            name=str(data["name"]),
            csrf=str(data["csrf"]),
            created_at=float(data.get("created_at", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not _key_alive(conn, session.key_id):
        return None
    return session


async def create_session(request: Request, response: Response, key_id: str, name: str) -> Session:
    """Store a new session for an authenticated admin key and set its cookie."""
    sid = secrets.token_urlsafe(32)
    session = Session(
        sid=sid, key_id=key_id, name=name, csrf=secrets.token_urlsafe(32), created_at=time.time()
    )
    data = {"key_id": key_id, "name": name, "csrf": session.csrf, "created_at": session.created_at}
    await _redis(request).set(_key(request, sid), orjson.dumps(data), ex=SESSION_TTL)
    signed = (await _serializer(request)).dumps(sid)
    response.set_cookie(
        COOKIE,
        str(signed),
        max_age=SESSION_TTL,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return session


async def delete_session(request: Request, response: Response) -> None:
    """Forget the request's session in Redis (so a copied cookie dies) and clear the cookie."""
    session = await read_session(request)
    if session is not None:
        await _redis(request).delete(_key(request, session.sid))
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def same_origin(request: Request) -> bool:
    """True when the request's Origin (or Referer) is this server itself.

    Browsers send Origin on every POST; a request with neither header is not a
    browser form submission and is refused too.
    """
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return False
        parts = referer.split("/")
        origin = "/".join(parts[:3]) if len(parts) >= 3 else referer
    host = request.headers.get("host", "")
    return origin.rstrip("/") in (f"http://{host}", f"https://{host}")
