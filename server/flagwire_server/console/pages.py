"""Console pages: server-rendered Jinja2 views over the store, plus sign-in and sign-out.

Reads come straight from the store (the pages are the admin API's peers, not
its clients); every change goes through the admin API from the browser, so it
is validated, audited and acknowledged exactly like a CLI change, and the
"applied by N of M" figures come from the same ``?wait`` response.  How a page
is rendered and guarded (templates, headers, layout, sign-in redirect) is
:mod:`flagwire_server.console.render`, shared with the other page modules.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from flagwire.core.operators import OPERATORS
from flagwire_server.api.ratelimit import RateLimiter
from flagwire_server.console import present
from flagwire_server.console.forms import FormRefused, read_form
from flagwire_server.console.render import (
    HERE,
    PROTECTED_ENV,
    guarded,
    layout,
    render,
    static_version,
    store_of,
    to_signin,
    unavailable,
)
from flagwire_server.services import services_of
from flagwire_server.sessions import (
    LOGIN_COOKIE,
    Session,
    create_session,
    delete_session,
    read_session,
    same_origin,
)
from flagwire_server.store.documents import NotFound, StoreUnavailable

__all__ = ["build_routes"]

log = logging.getLogger("flagwire.console")

# --- sign-in ----------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    # Browsers drop tabs and newlines from URLs ("/\t/evil" becomes "//evil"): refuse them.
    if (
        value
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and not any(c.isspace() for c in value)
    ):
        return value
    return "/"


def _signin_form(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "signin.html",
        status,
        error=error,
        login_csrf=token,
        next=_safe_next(request.query_params.get("next")),
        static=static_version(),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/signin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def signin_page(request: Request) -> Response:
    if await read_session(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _signin_form(request)


def _limiter(request: Request) -> RateLimiter:
    return services_of(request).signin_limiter


async def signin_post(request: Request) -> Response:
    try:
        form = await read_form(request)
    except FormRefused as exc:
        return Response(str(exc), status_code=exc.status, media_type="text/plain")
    token = str(form.get("csrf", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not same_origin(request) or not token or not secrets.compare_digest(token, cookie):
        return _signin_form(
            request, "The sign-in form expired or came from another site; try again.", 403
        )
    ip = request.client.host if request.client else "unknown"
    limiter = _limiter(request)
    if limiter.blocked(ip):
        return _signin_form(request, "Too many failed attempts; wait a minute.", 429)
    secret = str(form.get("key", "")).strip()
    record = services_of(request).keys.authenticate(secret)
    if record is None or record.kind != "admin":
        limiter.take(ip)
        why = (
            "That is an SDK key; the console needs an admin key."
            if record
            else "Unknown or revoked admin key."
        )
        # What was typed is never recorded; a known SDK key is named by its id.
        await _record(
            request,
            actor=record.name if record else "unknown",
            action="signin_failed",
            key=record.id if record else "",
            reason="an SDK key" if record else "unknown or revoked key",
        )
        return _signin_form(request, why, 401)
    response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
    await create_session(request, response, record.id, record.name)
    response.delete_cookie(LOGIN_COOKIE, path="/signin", httponly=True, samesite="strict")
    await _record(request, actor=record.name, action="signin", key=record.id)
    return response


async def _record(request: Request, *, actor: str, action: str, key: str, **detail: Any) -> None:
    """A sign-in, failed sign-in or sign-out in the instance-wide audit trail."""
    try:
        await services_of(request).audit.record(
            actor=actor,
            action=action,
            kind="session",
            key=key,
            address=request.client.host if request.client else "unknown",
            detail=detail,
        )
    except Exception:  # the answer does not depend on it; the log says it is missing
        log.exception("audit: could not record console %s", action)


async def signout(request: Request) -> Response:
    try:
        form = await read_form(request)
    except FormRefused as exc:
        return Response(str(exc), status_code=exc.status, media_type="text/plain")
    session = await read_session(request)
    token = str(form.get("csrf", ""))
    if session is not None and not (same_origin(request) and session.csrf_ok(token)):
        return Response("missing or wrong CSRF token", status_code=403)
    response = RedirectResponse("/signin", status_code=303)
    ended = await delete_session(request, response)
    if ended is not None:
        await _record(request, actor=ended.name, action="signout", key=ended.key_id)
    return response


# --- pages ------------------------------------------------------------------


async def home(request: Request) -> Response:
    session = await read_session(request)
    if session is None:
        return to_signin(request)
    try:
        envs = await store_of(request).list_envs()
    except StoreUnavailable as exc:
        return unavailable(request, session, exc)
    keys = [str(e.get("key")) for e in envs]
    env = PROTECTED_ENV if PROTECTED_ENV in keys or not keys else keys[0]
    return RedirectResponse(f"/envs/{env}/flags", status_code=303)


_PAGES: Final = {"flags": "flags", "segments": "segments", "audit": "audit"}


async def switch(request: Request) -> Response:
    env = request.query_params.get("env", "")
    page = _PAGES.get(request.query_params.get("page", ""), "flags")
    if not env or not all(c.isalnum() or c in "_-" for c in env):
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/envs/{env}/{page}", status_code=303)


async def _flags(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "flags")
    flags = await store_of(request).list_docs(env, "flag")
    tags = sorted({t for f in flags for t in f.get("tags") or []})
    return render(request, "flags.html", flags=flags, tags=tags, **ctx)


def _catalog(flags: list[dict[str, Any]], segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "flags": {f["key"]: [present.label(v) for v in f.get("variations") or []] for f in flags},
        "segments": [s["key"] for s in segments],
        "operators": list(OPERATORS),
    }


async def _flag(request: Request, session: Session) -> Response:
    env, key = request.path_params["env"], request.path_params["key"]
    ctx = await layout(request, session, env, "flags")
    store = store_of(request)
    doc = await store.get_doc(env, "flag", key)
    flags = await store.list_docs(env, "flag")
    segments = await store.list_docs(env, "segment")
    others = [f for f in flags if f.get("key") != key]
    return render(request, "flag.html", flag=doc, catalog=_catalog(others, segments), **ctx)


async def _history(request: Request, session: Session) -> Response:
    env, key = request.path_params["env"], request.path_params["key"]
    ctx = await layout(request, session, env, "flags")
    store = store_of(request)
    current = await store.get_doc(env, "flag", key)
    older = await store.history(env, "flag", key)
    versions = [current, *older]
    # The oldest version kept has nothing to compare with: it is shown as created.
    rows = [
        {
            "doc": doc,
            "current": i == 0,
            "changes": present.diff(versions[i + 1], doc) if i + 1 < len(versions) else None,
            "served_before": present.serving(versions[i + 1]) if i + 1 < len(versions) else None,
        }
        for i, doc in enumerate(versions)
    ]
    return render(request, "history.html", flag=current, rows=rows, **ctx)


async def _segments(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "segments")
    segments = await store_of(request).list_docs(env, "segment")
    return render(request, "segments.html", segments=segments, **ctx)


async def _segment(request: Request, session: Session) -> Response:
    env, key = request.path_params["env"], request.path_params["key"]
    ctx = await layout(request, session, env, "segments")
    store = store_of(request)
    doc = await store.get_doc(env, "segment", key)
    segments = await store.list_docs(env, "segment")
    catalog = _catalog([], [s for s in segments if s.get("key") != key])
    return render(request, "segment.html", segment=doc, catalog=catalog, **ctx)


async def _audit(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "audit")
    before = request.query_params.get("before") or None
    if before is not None and not all(c.isdigit() or c == "-" for c in before):
        before = None
    entries, cursor = await store_of(request).audit(env, limit=50, before=before)
    return render(
        request, "audit.html", entries=[e.to_json() for e in entries], cursor=cursor, **ctx
    )


async def _activity(request: Request, session: Session) -> Response:
    ctx = await layout(request, session, None, "activity")
    before = request.query_params.get("before") or None
    if before is not None and not all(c.isdigit() or c == "-" for c in before):
        before = None
    entries, cursor = await services_of(request).audit.page(limit=50, before=before)
    return render(
        request, "activity.html", entries=[e.to_json() for e in entries], cursor=cursor, **ctx
    )


async def _envs(request: Request, session: Session) -> Response:
    ctx = await layout(request, session, None, "envs")
    store = store_of(request)
    envs = []
    for e in ctx["envs"]:
        try:
            envs.append(await store.get_env(str(e.get("key"))))
        except NotFound:  # deleted since it was listed
            continue
    return render(request, "envs.html", environments=envs, **ctx)


async def _keys(request: Request, session: Session) -> Response:
    env = request.query_params.get("env") or None
    ctx = await layout(request, session, None, "keys")
    names = [str(e.get("key")) for e in ctx["envs"]]
    if not env and names:
        env = PROTECTED_ENV if PROTECTED_ENV in names else names[0]
    if env in names:
        ctx["env"] = env
    keys = await services_of(request).keys.list_keys()
    return render(request, "keys.html", keys=keys, **ctx)


def build_routes() -> list[BaseRoute]:
    """Every console route; ``app.py`` mounts them at ``/`` after the API."""
    return [
        Route("/", home, name="console-home"),
        Route("/signin", signin_page, methods=["GET"], name="console-signin"),
        Route("/signin", signin_post, methods=["POST"]),
        Route("/signout", signout, methods=["POST"], name="console-signout"),
        Route("/switch", switch),
        Route("/keys", guarded(_keys), name="console-keys"),
        Route("/activity", guarded(_activity), name="console-activity"),
        Route("/envs", guarded(_envs), name="console-envs"),
        Route("/envs/{env}/flags", guarded(_flags), name="console-flags"),
        Route("/envs/{env}/flags/{key}", guarded(_flag), name="console-flag"),
        Route("/envs/{env}/flags/{key}/history", guarded(_history), name="console-history"),
        Route("/envs/{env}/segments", guarded(_segments), name="console-segments"),
        Route("/envs/{env}/segments/{key}", guarded(_segment), name="console-segment"),
        Route("/envs/{env}/audit", guarded(_audit), name="console-audit"),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="console-static"),
    ]
