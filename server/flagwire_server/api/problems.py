"""RFC 9457 problem details: every refusal of the admin API says what and where.

Why one module: a caller (the CLI, the console, a script) handles every error
the same way — ``status``, a ``title`` per status, a ``detail`` sentence and,
for invalid documents, ``errors: [{path, message}]`` naming each JSON path.
Handlers raise :class:`Problem`; :func:`problem_response` renders it, and
:func:`exception_handlers` makes Starlette's own 404/405/500 answers under
``/api/v1`` come out the same way (``app.py`` installs them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

__all__ = ["PROBLEM_TYPE", "Problem", "exception_handlers", "problem_response"]

log = logging.getLogger("flagwire.admin")

PROBLEM_TYPE: Final = "https://flagwire.dev/problems/"
MEDIA_TYPE: Final = "application/problem+json"

_TYPES: Final = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-document",
    429: "rate-limited",
    500: "internal-error",
    503: "store-unavailable",
}


class Problem(Exception):
    """An HTTP error with an RFC 9457 body.

    Args:
        status: the HTTP status.
        detail: one sentence for a human.
        errors: ``(path, message)`` pairs, e.g. from a ``ValidationError``.
        headers: extra response headers (``Retry-After``, ``Allow``, ...).
        extra: additional members (``current_version`` on a 409).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.title = title or HTTPStatus(status).phrase
        self.extra = extra


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + _TYPES.get(problem.status, "error"),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "errors": [{"path": p, "message": m} for p, m in problem.errors],
        **problem.extra,
    }
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        headers=problem.headers,
        media_type=MEDIA_TYPE,
    )


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not _is_api(request):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    detail = {
        404: f"no such resource: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return problem_response(Problem(exc.status_code, detail, headers=exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    if not _is_api(request):
        return PlainTextResponse("Internal Server Error", status_code=500)
    return problem_response(Problem(500, "the server failed unexpectedly; nothing was changed"))


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


def exception_handlers() -> dict[Any, Handler]:
    """For ``Starlette(exception_handlers=...)``: problem JSON for ``/api/*``, plain elsewhere."""
    return {HTTPException: _http_exception, Exception: _server_error}
