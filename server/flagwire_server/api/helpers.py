"""Small helpers the admin API's handlers share: request parsing and answers.

Why a module of its own: handler modules (``documents.py``, ``environments.py``,
``keys.py``) import only these helpers, never the route table (``routes.py``)
or the dispatcher (``routing.py``), so the API has no import cycles and a
handler can be read, and tested, without the table.  Every helper raises
:class:`~flagwire_server.api.problems.Problem` for bad input; the dispatcher
turns it into a problem+json response.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.limits import KEY_RE
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of
from flagwire_server.store.documents import ENV_RE, Store, WriteResult

__all__ = [
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "MAX_WAIT",
    "audit_event",
    "env_param",
    "expected_version",
    "int_param",
    "json_response",
    "page_params",
    "propagation",
    "read_json",
    "store",
    "wait_param",
    "write_response",
]

log = logging.getLogger("flagwire.admin")

#: Largest request body accepted (a flag document is limited to 512 KiB by the model).
MAX_BODY: Final = 512 * 1024 + 4096
#: Deepest nesting of arrays and objects in a request body.  Deeper bodies are refused
#: before any handler walks them recursively (a merge patch 990 deep was a RecursionError).
MAX_JSON_DEPTH: Final = 64
#: Longest ``?wait=`` in seconds.
MAX_WAIT: Final = 30.0
_JSON_TYPES: Final = ("application/json", "application/merge-patch+json")
_ETAG_RE: Final = re.compile(r'^\s*(?:W/)?"?(\d{1,15})"?\s*$')


async def audit_event(
    request: Request,
    who: Any,
    *,
    action: str,
    kind: str,
    key: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an instance-wide audit entry for what ``who`` (a Principal) just did.

    The action has already happened, so a failure to record it is logged
    loudly rather than turned into an error the caller would retry.
    """
    try:
        await services_of(request).audit.record(
            actor=str(getattr(who, "name", "") or "unknown"),
            action=action,
            kind=kind,
            key=key,
            address=request.client.host if request.client else "unknown",
            detail={
                "via": getattr(who, "via", None),
                "actor_key_id": getattr(who, "key_id", None),
                **(detail or {}),
            },
        )
    except Exception:
        log.exception("audit: could not record %s %s %s", action, kind, key)


def store(request: Request) -> Store:
    return services_of(request).store


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def env_param(request: Request) -> str:
    env = str(request.path_params["env"])
    if not ENV_RE.match(env):
        raise Problem(404, f"environment {env[:80]!r} does not exist")
    return env


def key_param(request: Request, kind: str) -> str:
    """The path's document key; one no document can have is a 404, as an unknown one is."""
    key = str(request.path_params["key"])
    if not KEY_RE.match(key):
        raise Problem(404, f"{kind} {key[:80]!r} does not exist")
    return key


async def read_json(request: Request, *, required: bool = True, limit: int = MAX_BODY) -> Any:
    """The request's JSON body (415 wrong type, 413 over ``limit`` bytes, 400 not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise Problem(413, f"request body over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"request body over the limit of {limit} bytes")
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
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    if _depth_over(data, MAX_JSON_DEPTH):
        raise Problem(
            422,
            f"the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
            errors=[("", f"nesting deeper than {MAX_JSON_DEPTH}")],
        )
    return data


def _depth_over(data: Any, limit: int) -> bool:
    """True when ``data`` nests containers deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


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


def page_params(request: Request) -> tuple[int, str | None]:
    """``?limit=`` and ``?before=`` of an audit page (environment or instance).

    Both logs page the same way (a Redis stream read newest first), so both
    take and check their cursor in one place: a malformed one is a 400 naming it.
    """
    limit = int_param(request, "limit", 50, 1, 500)
    before = request.query_params.get("before")
    if before is not None:
        left, _, right = before.partition("-")
        if not (left.isdigit() and right.isdigit() and len(left) <= 20 and len(right) <= 20):
            raise Problem(
                400,
                "before must be a cursor such as 1700000000000-0",
                errors=[("before", f"got {before[:40]!r}")],
            )
    return limit, before


async def propagation(
    request: Request, env: str, version: int, wait: float | None
) -> dict[str, Any] | None:
    """Wait for clients to acknowledge ``version`` (``?wait=``); None when not asked."""
    if wait is None:
        return None
    try:
        result = await services_of(request).fanout.wait_for(env, version, wait)
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
        "changed": res.changed,
    }
    # Nothing was sent for an unchanged document, so there is nothing to wait for.
    prop = await propagation(request, env, res.env_version, wait) if res.changed else None
    if prop is not None:
        body["propagation"] = prop
    return json_response(body, 201 if created else 200, headers={"ETag": f'"{res.version}"'})
