"""``GET /api/v1/audit``: the instance-wide audit trail, newest first.

Why apart from an environment's audit: these events (environments, API keys,
console sign-ins and sign-outs, admin-key rotation) outlive any environment;
see :mod:`flagwire_server.store.audit`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import json_response, page_params
from flagwire_server.services import services_of

__all__ = ["instance_audit"]


async def instance_audit(request: Request, who: Principal | None) -> Response:
    limit, before = page_params(request)
    entries, cursor = await services_of(request).audit.page(limit, before)
    return json_response({"entries": [e.to_json() for e in entries], "next": cursor})
