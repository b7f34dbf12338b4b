"""Console sessions: an admin key exchanged once for a signed, server-side session.

Why server-side: the admin key must never live in the browser, and signing out
(or revoking the key) must make a copied cookie useless.  So the cookie only
carries a random session id, signed with itsdangerous so a guessed id is
refused before Redis is asked; the session itself — ``{key_id, name, cred}`` —
lives in Redis (``store/sessions.py``) under the SHA-256 of its id, with a TTL,
and is deleted on sign-out.  Nothing in Redis signs in: not the id (only its
hash), not the CSRF token (derived from the id), not the signing secret
(``FLAGWIRE_SESSION_SECRET``, else ``<data dir>/session-secret``, mode 0600).

Bound to its credential: ``cred`` names what the session was made from.  For an
API key it is the key's id (a revoked key ends its sessions); for
``FLAGWIRE_ADMIN_KEY`` it is an HMAC of that key under the signing secret, so
a session made with the old value ends when the value is rotated, across a
restart, on every instance that runs the new value.

CSRF: the cookie is ``SameSite=Strict``, and every unsafe request must also
carry the session's CSRF token in ``X-CSRF-Token`` (the pages render it into a
``<meta>`` tag).  The sign-in form, which has no session yet, is protected by
an Origin check plus a double-submit token (cookie == field).

``read_session`` is what the admin API (``auth.py``) and the stream call for
requests without an ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from flagwire_server.config import Settings
from flagwire_server.services import services_of
from flagwire_server.store.sessions import SessionStore, session_hash

__all__ = [
    "COOKIE",
    "LOGIN_COOKIE",
    "SECRET_FILE",
    "SESSION_TTL",
    "Session",
    "create_session",
    "delete_session",
    "load_session_secret",
    "read_session",
    "same_origin",
]

COOKIE: Final = "fw_session"
#: The double-submit token of the sign-in form (no session exists yet).
LOGIN_COOKIE: Final = "fw_login"
#: Seconds a session lives (also the cookie's and the signature's max age).
SESSION_TTL: Final = 12 * 3600
#: The signing secret's file in the data directory when FLAGWIRE_SESSION_SECRET is unset.
SECRET_FILE: Final = "session-secret"
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

    @property
    def sid_hash(self) -> str:
        """The name the session is stored under (what its streams are watched by)."""
        return session_hash(self.sid)

    def csrf_ok(self, token: str | None) -> bool:
        """True when ``token`` is this session's CSRF token (constant time)."""
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf.encode())


def load_session_secret(settings: Settings) -> bytes:
    """``FLAGWIRE_SESSION_SECRET``, else the data directory's secret (made once, mode 0600).

    Several processes of one data directory race to make it; the first link wins
    and the others read it.  Several hosts must share FLAGWIRE_SESSION_SECRET.
    """
    if settings.session_secret:
        return settings.session_secret.encode()
    directory = Path(settings.data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / SECRET_FILE
    for _ in range(50):
        try:
            data = path.read_bytes().strip()
        except FileNotFoundError:
            data = b""
        if data:
            return data
        tmp = directory / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_urlsafe(32).encode())
        try:
            os.link(tmp, path)  # atomic and exclusive: never a half-written secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        time.sleep(0.01)
    raise RuntimeError(f"cannot read or create the session secret {path}")


def _secret(conn: HTTPConnection) -> bytes:
    return services_of(conn).session_secret


def _sessions(conn: HTTPConnection) -> SessionStore:
    return services_of(conn).sessions


def _serializer(conn: HTTPConnection) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(conn), salt=_SALT)


def _derive(conn: HTTPConnection, purpose: str, value: str) -> str:
    msg = f"{purpose}:{value}".encode("utf-8", "surrogatepass")
    return hmac.new(_secret(conn), msg, hashlib.sha256).hexdigest()


def _credential(conn: HTTPConnection, key_id: str) -> str:
    """What binds a session to the key it was made from (see the module docstring)."""
    if key_id != _ENV_ADMIN_ID:
        return key_id
    admin_key = services_of(conn).keys.admin_key
    return _derive(conn, "admin-key", admin_key) if admin_key else ""


def _key_alive(conn: HTTPConnection, key_id: str, cred: str) -> bool:
    keys = services_of(conn).keys
    if key_id == _ENV_ADMIN_ID:
        current = _credential(conn, key_id)
        return bool(current) and hmac.compare_digest(current, cred)
    record = keys.get(key_id)
    return (
        record is not None
        and record.revoked_at is None
        and record.kind == "admin"
        and hmac.compare_digest(key_id, cred)
    )


async def read_session(conn: HTTPConnection) -> Session | None:
    """The console session of a request or WebSocket, or None.

    None when there is no cookie, its signature is bad or expired, the session
    was signed out (gone from Redis) or its credential was revoked or rotated.
    Never raises for bad input; a Redis outage propagates as redis' own error.
    """
    raw = conn.cookies.get(COOKIE)
    if not raw or len(raw) > 512:
        return None
    try:
        sid = _serializer(conn).loads(raw, max_age=SESSION_TTL)
    except BadSignature:
        return None
    if not isinstance(sid, str) or not sid:
        return None
    data = await _sessions(conn).get(session_hash(sid))
    if data is None:
        return None
    try:
        session = Session(
            sid=sid,
            key_id=str(data["key_id"]),
            name=str(data["name"]),
            csrf=_derive(conn, "csrf", sid),
            created_at=float(data.get("created_at", 0)),
        )
        cred = str(data["cred"])
    except (KeyError, TypeError, ValueError):
        return None
    if not _key_alive(conn, session.key_id, cred):
        return None
    return session


async def create_session(request: Request, response: Response, key_id: str, name: str) -> Session:
    """Store a new session for an authenticated admin key and set its cookie."""
    sid = secrets.token_urlsafe(32)
    session = Session(
        sid=sid,
        key_id=key_id,
        name=name,
        csrf=_derive(request, "csrf", sid),
        created_at=time.time(),
    )
    data = {
        "key_id": key_id,
        "name": name,
        "cred": _credential(request, key_id),
        "created_at": session.created_at,
    }
    await _sessions(request).create(session.sid_hash, data, SESSION_TTL)
    signed = _serializer(request).dumps(sid)
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


async def delete_session(request: Request, response: Response) -> Session | None:
    """End the request's session everywhere (a copied cookie dies, its streams close)."""
    session = await read_session(request)
    if session is not None:
        await _sessions(request).delete(session.sid_hash)
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return session


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
