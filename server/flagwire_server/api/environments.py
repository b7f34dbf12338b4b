"""Admin handlers for environments, their audit log and change propagation.

Evaluation, under ``/environments/{env}/evaluate``, has a module of its own
(``evaluation.py``): it is the one admin route an SDK key may call.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import (
    audit_event,
    env_param,
    json_response,
    page_params,
    read_json,
    store,
)
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of


async def _connected(request: Request, env: str) -> int | None:
    """Connected clients of ``env`` across instances (None when Redis cannot tell)."""
    try:
        return await services_of(request).fanout.connected_all(env)
    except Exception:
        return None


async def list_envs(request: Request, who: Principal | None) -> Response:
    return json_response({"environments": await store(request).list_envs()})


async def create_env(request: Request, who: Principal | None) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", 'expected {"key": ..., "name"}')])
    unknown = sorted(set(body) - {"key", "name"})
    if unknown:
        raise Problem(422, "unknown fields", errors=[(u, "unknown field") for u in unknown])
    info = await store(request).create_env(body.get("key"), body.get("name") or "")  # type: ignore[arg-type]
    await audit_event(
        request,
        who,
        action="create",
        kind="environment",
        key=info["key"],
        detail={"name": info.get("name")},
    )
    return json_response({**info, "connected": 0}, 201)


async def get_env(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    info = await store(request).get_env(env)
    return json_response({**info, "connected": await _connected(request, env)})


async def delete_env(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).delete_env(env)
    await audit_event(request, who, action="delete", kind="environment", key=env)
    return Response(status_code=204)


async def audit(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    limit, before = page_params(request)
    entries, cursor = await store(request).audit(env, limit, before)
    return json_response({"entries": [e.to_json() for e in entries], "next": cursor})


async def change(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    raw = str(request.path_params["version"])
    if not raw.isdigit() or not 0 < int(raw) < 2**53:
        raise Problem(404, f"no change {raw[:40]!r} in {env!r}")
    version = int(raw)
    services = services_of(request)
    record = await services.changelog.record(env, version)
    if record is None:
        await store(request).get_env(env)  # 404 for a missing environment first
        raise Problem(404, f"change {version} of {env!r} is not in the change log")
    out: dict[str, Any] = {
        "version": version,
        "key": record.key,
        "actor": record.actor,
        "committed_ms": record.committed_ms,
        "connected": None,
        "acknowledged": None,
        "lost": None,
        "complete": None,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }
    result = await services.fanout.propagation(env, version)
    out.update({k: v for k, v in result.items() if k != "version"})
    return json_response(out)
