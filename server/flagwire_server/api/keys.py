"""Admin routes for API keys: create (secret shown once), list, revoke.

Why the environment check lives here: an SDK key is useless for an
environment that does not exist, and :class:`~flagwire_server.store.apikeys.KeyRing`
deliberately knows nothing of the flag store.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.problems import Problem
from flagwire_server.api.routing import api, json_response, read_json, store
from flagwire_server.store.apikeys import KeyRing


def _ring(request: Request) -> KeyRing:
    ring: KeyRing = request.app.state.keys
    return ring


@api(
    "GET",
    "/keys",
    operation_id="listKeys",
    summary="List API keys (never their secrets)",
    tag="keys",
    responses={200: "KeyList"},
)
async def list_keys(request: Request, who: Principal | None) -> Response:
    return json_response({"keys": [r.to_json() for r in await _ring(request).list_keys()]})


@api(
    "POST",
    "/keys",
    operation_id="createKey",
    summary="Create an SDK or admin key; the secret is in this response only",
    tag="keys",
    responses={201: "NewKey"},
    body="KeyInput",
    errors=(400, 413, 415, 422),
)
async def create_key(request: Request, who: Principal | None) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", 'expected {"name", "kind", "env"}')])
    unknown = sorted(set(body) - {"name", "kind", "env"})
    if unknown:
        raise Problem(422, "unknown fields", errors=[(u, "unknown field") for u in unknown])
    env = body.get("env")
    if body.get("kind") == "sdk" and isinstance(env, str):
        envs = {e.get("key") for e in await store(request).list_envs()}
        if env not in envs:
            raise Problem(
                422,
                f"environment {env[:80]!r} does not exist",
                errors=[("env", "no such environment")],
            )
    record, secret = await _ring(request).create(body.get("name"), body.get("kind"), env)  # type: ignore[arg-type]
    return json_response({"key": record.to_json(), "secret": secret}, 201)


@api(
    "DELETE",
    "/keys/{id}",
    operation_id="revokeKey",
    summary="Revoke a key; its streams close within a second",
    tag="keys",
    responses={200: "RevokedKey"},
    errors=(404,),
)
async def revoke_key(request: Request, who: Principal | None) -> Response:
    key_id = str(request.path_params["id"])
    record = await _ring(request).revoke(key_id[:100])
    if record is None:
        raise Problem(404, f"no live key with id {key_id[:80]!r}")
    return json_response({"key": record.to_json()})
