"""The admin REST API's frame: a route table, request parsing, error translation.

Why a table: the same declarations build the Starlette routes and the OpenAPI
document (``openapi.py``), so the document cannot drift from the routes.  The
handlers live by concept in ``admin_envs.py``, ``admin_docs.py`` and
``admin_keys.py``; each registers itself with :func:`api`.

Every handler runs inside :func:`_dispatch`, which turns the store's and the
model's exceptions into RFC 9457 problems (``problems.py``): invalid document
422, not found 404, version conflict 409 with ``current_version``, Redis down
503.  Nothing is written on any of those paths — the store validates before
its one atomic script.  Bodies are limited to :data:`MAX_BODY` bytes (413) and
must be JSON (415).  Methods a path does not have get a 405 problem.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flagwire.core.errors import ValidationError
from flagwire_server.api.auth import Principal, authenticate
from flagwire_server.api.problems import Problem, problem_response
from flagwire_server.store.documents import (
    ENV_RE,
    AlreadyExists,
    Conflict,
    NotFound,
    Store,
    StoreCorrupt,
    StoreUnavailable,
    WriteResult,
)

__all__ = ["API_PREFIX", "MAX_BODY", "MAX_WAIT", "ApiRoute", "Param", "api", "routes", "table"]

log = logging.getLogger("flagwire.admin")

API_PREFIX: Final = "/api/v1"
#: Largest request body accepted (a flag document is limited to 512 KiB by the model).
MAX_BODY: Final = 512 * 1024 + 4096
#: Longest ``?wait=`` in seconds.
MAX_WAIT: Final = 30.0
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
_JSON_TYPES: Final = ("application/json", "application/merge-patch+json")
_ETAG_RE: Final = re.compile(r'^\s*(?:W/)?"?(\d{1,15})"?\s*$')

Handler = Callable[[Request, Principal | None], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, for validation hints and the OpenAPI document."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One operation: method, path under ``/api/v1`` and what it takes and returns."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, str | None]  # status -> component schema name (None: no body)
    query: tuple[Param, ...] = ()
    body: str | None = None  # component schema of the request body
    auth: Literal["admin", "sdk", "none"] = "admin"
    write: bool = False  # takes If-Match and ?wait=
    errors: tuple[int, ...] = field(default=())


_TABLE: list[ApiRoute] = []


def api(
    method: str,
    path: str,
    *,
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[int, str | None],
    query: tuple[Param, ...] = (),
    body: str | None = None,
    auth: Literal["admin", "sdk", "none"] = "admin",
    write: bool = False,
    errors: tuple[int, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a handler for ``method path`` (path relative to ``/api/v1``)."""

    def register(handler: Handler) -> Handler:
        _TABLE.append(
            ApiRoute(
                method,
                path,
                handler,
                operation_id,
                summary,
                tag,
                responses,
                query,
                body,
                auth,
                write,
                errors,
            )
        )
        return handler

    return register


def table() -> list[ApiRoute]:
    """Every registered operation (importing the handler modules first)."""
    from flagwire_server.api import documents, environments, keys, openapi  # noqa: F401  (they register)

    return list(_TABLE)


def routes() -> list[BaseRoute]:
    """Starlette routes for every admin path, full paths under ``/api/v1``.

    One route per path dispatches on the method itself so that a method the
    path lacks gets a 405 problem (with ``Allow``) rather than Starlette's
    plain-text one; a final catch-all answers unknown ``/api/v1`` paths with a
    404 problem.  Add these after every other ``/api/v1`` HTTP route.
    """
    by_path: dict[str, dict[str, ApiRoute]] = {}
    for op in table():
        by_path.setdefault(op.path, {})[op.method] = op
    out: list[BaseRoute] = []
    for path, ops in by_path.items():
        out.append(Route(API_PREFIX + path, _endpoint(ops), methods=_ALL_METHODS))
    # Last: any other HTTP path under /api/v1 is a 404 problem, not Starlette's plain text.
    # (HTTP only: the stream's WebSocket route is never shadowed.)
    out.append(Route(API_PREFIX + "/{rest:path}", _unknown, methods=_ALL_METHODS))
    return out


async def _unknown(request: Request) -> Response:
    return problem_response(Problem(404, f"no such resource: {request.url.path}"))


def _endpoint(ops: dict[str, ApiRoute]) -> Callable[[Request], Awaitable[Response]]:
    allow = ", ".join(sorted({*ops, *(["HEAD"] if "GET" in ops else [])}))

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        op = ops.get(method)
        if op is None:
            return problem_response(
                Problem(
                    405,
                    f"{request.method} is not allowed here; allowed: {allow}",
                    headers={"Allow": allow},
                )
            )
        return await _dispatch(op, request)

    return endpoint


async def _dispatch(op: ApiRoute, request: Request) -> Response:
    try:
        principal: Principal | None = None
        if op.auth != "none":
            env = request.path_params.get("env") if op.auth == "sdk" else None
            principal = await authenticate(request, sdk_env=env)
        return await op.handler(request, principal)
    except Problem as problem:
        return problem_response(problem)
    except ValidationError as exc:
        return problem_response(
            Problem(422, f"invalid document: {len(exc.errors)} problem(s)", errors=exc.errors)
        )
    except AlreadyExists as exc:
        return problem_response(Problem(409, str(exc), current_version=exc.current_version))
    except Conflict as exc:
        return problem_response(Problem(409, str(exc), current_version=exc.current_version))
    except NotFound as exc:
        return problem_response(Problem(404, str(exc)))
    except StoreUnavailable:
        return problem_response(
            Problem(
                503,
                "store unavailable: Redis cannot be reached; nothing was changed",
                title="Store Unavailable",
                headers={"Retry-After": "1"},
            )
        )
    except StoreCorrupt as exc:
        log.error("store refused a write on %s: %s", request.url.path, exc)
        return problem_response(Problem(500, f"{exc}"))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(Problem(500, "the server failed unexpectedly"))


# --- helpers for handlers -------------------------------------------------------


def store(request: Request) -> Store:
    s: Store = request.app.state.store
    return s


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def env_param(request: Request) -> str:
    env = str(request.path_params["env"])
    if not ENV_RE.match(env):
        raise Problem(404, f"environment {env[:80]!r} does not exist")
    return env


async def read_json(request: Request, *, required: bool = True) -> Any:
    """The request's JSON body (415 wrong type, 413 too large, 400 not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise Problem(413, f"request body over the limit of {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Problem(413, f"request body over the limit of {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        if required:
            raise Problem(400, "a JSON request body is required")
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _JSON_TYPES:
        raise Problem(415, f"expected Content-Type application/json, got {media or 'none'!r}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


def expected_version(request: Request, body: Any = None, *, from_body: bool = True) -> int | None:
    """The expected flag version: ``If-Match: "<n>"`` or the body's ``version`` field."""
    header = request.headers.get("if-match")
    from_header: int | None = None
    if header is not None and header.strip() != "*":
        m = _ETAG_RE.match(header)
        if m is None:
            raise Problem(
                400,
                'If-Match must be a version such as "3"',
                errors=[("If-Match", "expected a quoted integer")],
            )
        from_header = int(m.group(1))
    in_body: int | None = None
    if from_body and isinstance(body, dict) and "version" in body:
        v = body["version"]
        if type(v) is not int or v < 0:
            raise Problem(
                422,
                "version must be a non-negative integer",
                errors=[("version", "expected the current version as an integer")],
            )
        in_body = v
    if from_header is not None and in_body is not None and from_header != in_body:
        raise Problem(400, "If-Match and the body's version disagree")
    return from_header if from_header is not None else in_body


def wait_param(request: Request) -> float | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:
        raise Problem(
            400,
            f"wait must be a number of seconds between 0 and {MAX_WAIT:g}",
            errors=[("wait", f"got {raw[:40]!r}")],
        )
    return value


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise Problem(
            400,
            f"{name} must be an integer from {lo} to {hi}",
            errors=[(name, f"got {raw[:40]!r}")],
        )
    return int(raw)


async def propagation(
    request: Request, env: str, version: int, wait: float | None
) -> dict[str, Any] | None:
    """Wait for clients to acknowledge ``version`` (``?wait=``); None when not asked."""
    if wait is None:
        return None
    fanout = getattr(request.app.state, "fanout", None)
    wait_for = getattr(fanout, "wait_for", None)
    if wait_for is None:
        return None
    try:
        result = await wait_for(env, version, wait)
    except Exception:
        log.exception("propagation wait failed for %s@%s", env, version)
        return None
    return dict(result) if isinstance(result, dict) else None


async def write_response(
    request: Request, env: str, res: WriteResult, wait: float | None, *, created: bool = False
) -> Response:
    body: dict[str, Any] = {
        res.kind: res.doc,
        "version": res.version,
        "env_version": res.env_version,
    }
    prop = await propagation(request, env, res.env_version, wait)
    if prop is not None:
        body["propagation"] = prop
    return json_response(body, 201 if created else 200, headers={"ETag": f'"{res.version}"'})
