"""The OpenAPI 3.1 document of the admin API, built from the route table.

Why generated: paths, methods, parameters and status codes come from the same
:class:`~flagwire_server.api.routing.ApiRoute` table that builds the routes
(``routes.py``), so the document describes exactly what is served; only the
component schemas are written by hand (``schemas.py``).  The table passes
itself in, so this module never imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from flagwire_server.api.helpers import MAX_WAIT
from flagwire_server.api.routing import API_PREFIX, ApiRoute
from flagwire_server.api.schemas import SCHEMAS, ref

__all__ = ["document"]

_S = dict[str, Any]

_PATH_PARAMS: Final[dict[str, _S]] = {
    "env": {"type": "string", "examples": ["production"]},
    "key": {"type": "string", "examples": ["checkout"]},
    "id": {"type": "string", "examples": ["key_0123456789ab"]},
    "version": {"type": "integer", "examples": [1]},
    "op": {
        "enum": ["pause", "resume", "advance", "approve", "rollback", "abandon"],
        "examples": ["pause"],
    },
    "name": {"type": "string", "examples": ["standard"]},
}
_PROBLEM: Final[_S] = {"application/problem+json": {"schema": ref("Problem")}}
_WHY: Final[dict[int, str]] = {
    400: "malformed request (query, header or JSON)",
    401: "missing or unknown API key",
    403: "an SDK key (or a session without its CSRF token) where an admin key is needed",
    404: "no such environment, document, key or version",
    405: "method not allowed",
    409: "version conflict (current_version says the current one) or already exists",
    413: "request body over the limit",
    415: "body is not JSON",
    422: "invalid document; errors name each path",
    429: "rate limited (see Retry-After)",
    503: "store unavailable; nothing was changed",
}


def _operation(op: ApiRoute) -> _S:
    params: list[_S] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _PATH_PARAMS[name],
            "example": _PATH_PARAMS[name]["examples"][0],
        }
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    params += [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "schema": p.schema,
            "description": p.description,
        }
        for p in op.query
    ]
    if op.write:
        params += [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                "description": "seconds to wait for connected clients to acknowledge the change",
            },
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": r'^"\d+"$'},
                "description": 'the expected current version, e.g. "3"',
            },
        ]
    responses: _S = {}
    for status, schema in sorted(op.responses.items()):
        desc = "no content" if schema is None else schema
        resp: _S = {"description": desc}
        if schema is not None:
            resp["content"] = {"application/json": {"schema": ref(schema)}}
        responses[str(status)] = resp
    errors = {*op.errors, 400, 405, 429, 503}
    if op.auth != "none":
        errors |= {401, 403}
    for status in sorted(errors):
        responses[str(status)] = {"description": _WHY[status], "content": _PROBLEM}
    out: _S = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
        "responses": responses,
    }
    if op.auth == "none":
        out["security"] = []
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": ref(op.body)},
                **(
                    {"application/merge-patch+json": {"schema": ref(op.body)}}
                    if op.method == "PATCH"
                    else {}
                ),
            },
        }
    return out


def document(operations: Iterable[ApiRoute]) -> _S:
    """The OpenAPI 3.1 document for ``operations`` (the admin API's route table)."""
    paths: _S = {}
    for op in operations:
        paths.setdefault(API_PREFIX + op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flagwire admin API",
            "version": "1",
            "description": "Feature flags, segments, environments, keys and audit. "
            "Errors are RFC 9457 problem details.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an admin key (or an SDK key where allowed)",
                }
            },
        },
    }
