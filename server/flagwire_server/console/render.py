"""How every console page is rendered and guarded: templates, security headers, layout.

Shared by the page modules (``pages``, ``insight``, ``releases``, ``webhooks``):
the Jinja2 environment and its filters, the headers every page carries (a strict
Content-Security-Policy among them), the layout's common context, and
:func:`guarded`, which sends a browser without a session to sign-in and turns
a missing document or an unreachable store into an error page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from flagwire_server.console import present
from flagwire_server.services import services_of
from flagwire_server.sessions import Session, read_session
from flagwire_server.store.documents import NotFound, Store, StoreUnavailable

__all__ = [
    "HERE",
    "PROTECTED_ENV",
    "error_page",
    "guarded",
    "layout",
    "render",
    "static_version",
    "store_of",
    "to_signin",
    "unavailable",
]

HERE: Final = Path(__file__).parent
_ENV: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["serving"] = present.serving
_ENV.filters["label"] = present.label
_ENV.filters["when"] = present.when
_ENV.globals["diff"] = present.diff
PROTECTED_ENV: Final = "production"


def json_script(value: Any) -> Markup:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # escaped above for the script context


_ENV.filters["json_script"] = json_script


def _csp(request: Request) -> str:
    host = request.headers.get("host", "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": _csp(request),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _ENV.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status, headers=_headers(request))


def error_page(
    request: Request,
    status: int,
    session: Session | None,
    envs: list[Any],
    title: str,
    message: str,
) -> HTMLResponse:
    """error.html with no environment selected (the sidebar still lists ``envs``)."""
    return render(
        request,
        "error.html",
        status,
        session=session,
        envs=envs,
        env=None,
        env_info=None,
        page="",
        protected=False,
        static=static_version(),
        title=title,
        message=message,
    )


def unavailable(request: Request, session: Session | None, exc: StoreUnavailable) -> HTMLResponse:
    """A 503 page when Redis cannot be reached: no environments can be listed either."""
    return error_page(request, 503, session, [], "Store unavailable", f"{exc}. Try again shortly.")


def store_of(request: Request) -> Store:
    return services_of(request).store


def to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


async def layout(request: Request, session: Session, env: str | None, page: str) -> dict[str, Any]:
    store = store_of(request)
    envs = await store.list_envs()
    info: dict[str, Any] | None = None
    if env is not None:
        info = await store.get_env(env)  # NotFound -> 404 page
    return {
        "session": session,
        "envs": envs,
        "env": env,
        "env_info": info,
        "page": page,
        "protected": env == PROTECTED_ENV,
        "static": static_version(),
    }


_STATIC_VERSION: list[str] = []


def static_version() -> str:
    """A cache-busting token: changes whenever a static file changes."""
    if not _STATIC_VERSION:
        stamp = max((p.stat().st_mtime_ns for p in (HERE / "static").iterdir()), default=0)
        _STATIC_VERSION.append(format(stamp, "x")[-8:])
    return _STATIC_VERSION[0]


def guarded(handler: Any) -> Any:
    """Wrap a page: redirect to sign-in without a session, 404 page on NotFound."""

    async def page(request: Request) -> Response:
        session = await read_session(request)
        if session is None:
            return to_signin(request)
        try:
            response: Response = await handler(request, session)
        except NotFound as exc:
            envs = await store_of(request).list_envs()
            return error_page(request, 404, session, envs, "Not found", str(exc))
        except StoreUnavailable as exc:
            return unavailable(request, session, exc)
        return response

    page.__name__ = handler.__name__
    return page
