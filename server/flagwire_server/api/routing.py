"""The admin API's frame: from operations to Starlette routes, and error translation.

Why a declared operation: the same :class:`ApiRoute` values build the
Starlette routes (:func:`starlette_routes`) and the OpenAPI document
(``openapi.py``), so the document cannot drift from the routes.  The
operations are listed in one place, the table in ``routes.py``; the handlers
live by concept at module level in ``documents.py``, ``environments.py`` and
``keys.py``, and import only ``helpers.py``.  Nothing registers itself on
import.

Every handler runs inside :func:`_dispatch`, which turns the store's and the
model's exceptions into RFC 9457 problems (``problems.py``): invalid document
422, not found 404, version conflict 409 with ``current_version``, Redis down
503.  Nothing is written on any of those paths — the store validates before
its one atomic script.  Bodies are limited to ``helpers.MAX_BODY`` bytes (413)
and must be JSON (415).  Methods a path does not have get a 405 problem.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flagwire.core.errors import ValidationError
from flagwire_server.api.auth import Principal, authenticate
from flagwire_server.api.problems import Problem, problem_response
from flagwire_server.store.documents import (
    AlreadyExists,
    Conflict,
    NotFound,
    StoreCorrupt,
    StoreUnavailable,
)

__all__ = ["API_PREFIX", "ApiRoute", "Handler", "Param", "starlette_routes"]

log = logging.getLogger("flagwire.admin")

API_PREFIX: Final = "/api/v1"
_ALL_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]

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
    _: KW_ONLY
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, str | None]  # status -> component schema name (None: no body)
    query: tuple[Param, ...] = ()
    body: str | None = None  # component schema of the request body
    auth: Literal["admin", "sdk", "none"] = "admin"
    write: bool = False  # takes If-Match and ?wait=
    errors: tuple[int, ...] = ()


def starlette_routes(operations: Iterable[ApiRoute]) -> list[BaseRoute]:
    """Starlette routes for ``operations``, full paths under ``/api/v1``.

    One route per path dispatches on the method itself so that a method the
    path lacks gets a 405 problem (with ``Allow``) rather than Starlette's
    plain-text one; a final catch-all answers unknown ``/api/v1`` paths with a
    404 problem.  Add these after every other ``/api/v1`` HTTP route.
    """
    by_path: dict[str, dict[str, ApiRoute]] = {}
    for op in operations:
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
