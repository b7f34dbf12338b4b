"""``GET /api/v1/audit``: the instance-wide audit trail, newest first.

Why apart from an environment's audit: these events (environments, API keys,
console sign-ins and sign-outs, admin-key rotation) outlive any environment;
see :mod:`flagwire_server.store.audit`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import int_param, json_response
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of

__all__ = ["instance_audit"]


async def instance_audit(request: Request, who: Principal | None) -> Response:
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
    entries, cursor = await services_of(request).audit.page(limit, before)
    return json_response({"entries": [e.to_json() for e in entries], "next": cursor})
