"""``/healthz`` (the process answers), ``/readyz`` (it can vouch for its data) and ``/metrics``.

Not ready (503, JSON ``{"ready": false, "reasons": [...]}``) when Redis does
not answer a PING within half a second, the fan-out is not started, an
environment's change reader is failing or stopped, or a store reset was
detected (``store_reset``: see ``docs/storage.md``).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flagwire_server.observability.metrics import metrics_endpoint
from flagwire_server.services import Services, services_of

__all__ = ["readiness", "routes"]


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "instance": services_of(request).instance_id})


async def readiness(services: Services) -> list[dict[str, str]]:
    reasons: list[dict[str, str]] = []
    try:
        await asyncio.wait_for(services.identity.ping(), 0.5)
    except Exception as exc:
        reasons.append({"reason": "redis_unreachable", "detail": f"{type(exc).__name__}: {exc}"})
    reasons.extend(services.fanout.not_ready())
    return reasons


async def readyz(request: Request) -> JSONResponse:
    state = services_of(request)
    reasons = await readiness(state)
    body = {
        "ready": not reasons,
        "instance": state.instance_id,
        "reasons": reasons,
        "connected": state.fanout.connected(),
    }
    return JSONResponse(body, status_code=503 if reasons else 200)


def routes(metrics: bool = True) -> list[Route]:
    out = [
        Route("/healthz", healthz, methods=["GET", "HEAD"], name="healthz"),
        Route("/readyz", readyz, methods=["GET", "HEAD"], name="readyz"),
    ]
    if metrics:
        out.append(Route("/metrics", metrics_endpoint, methods=["GET"], name="metrics"))
    return out
