"""Admin handlers for API keys: create (secret shown once), list, revoke.

Why the environment check lives here: an SDK key is useless for an
environment that does not exist, and :class:`~flagwire_server.store.apikeys.KeyRing`
deliberately knows nothing of the flag store.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import audit_event, json_response, read_json, store
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of
from flagwire_server.store.apikeys import KeyRing


def _ring(request: Request) -> KeyRing:
    return services_of(request).keys


async def list_keys(request: Request, who: Principal | None) -> Response:
    return json_response({"keys": [r.to_json() for r in await _ring(request).list_keys()]})


async def create_key(request: Request, who: Principal | None) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", 'expected {"name", "kind", "env"}')])
    unknown = sorted(set(body) - {"name", "kind", "env"})
    if unknown:
        raise Problem(422, "unknown fields", errors=[(u, "unknown field") for u in unknown])
    env = body.get("env")
    if body.get("kind") in ("sdk", "client") and isinstance(env, str):
        envs = {e.get("key") for e in await store(request).list_envs()}
        if env not in envs:
            raise Problem(
                422,
                f"environment {env[:80]!r} does not exist",
                errors=[("env", "no such environment")],
            )
    record, secret = await _ring(request).create(body.get("name"), body.get("kind"), env)  # type: ignore[arg-type]
    await audit_event(
        request,
        who,
        action="create",
        kind="key",
        key=record.id,
        detail={"name": record.name, "kind": record.kind, "env": record.env},
    )
    return json_response({"key": record.to_json(), "secret": secret}, 201)


async def revoke_key(request: Request, who: Principal | None) -> Response:
    key_id = str(request.path_params["id"])
    record = await _ring(request).revoke(key_id[:100])
    if record is None:
        raise Problem(404, f"no live key with id {key_id[:80]!r}")
    await audit_event(
        request,
        who,
        action="revoke",
        kind="key",
        key=record.id,
        detail={"name": record.name, "kind": record.kind, "env": record.env},
    )
    return json_response({"key": record.to_json()})
