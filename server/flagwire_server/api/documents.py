"""Admin handlers for flags and segments: list, get, create, replace, merge-patch,
delete, copy, history, restore.

Why one module for both: segments are managed exactly like flags (the store
takes the kind as a parameter), so each handler takes the ``kind`` and the
route table (``routes.py``) binds it once per kind; flags and segments cannot
drift apart.  Writes answer
``{<kind>: doc, version, env_version, propagation?}``; ``?wait=<s>`` waits for
connected clients to acknowledge the change.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import (
    env_param,
    expected_version,
    json_response,
    key_param,
    read_json,
    store,
    wait_param,
    write_response,
)
from flagwire_server.api.problems import Problem
from flagwire_server.store.documents import Kind


def _actor(who: Principal | None) -> str:
    return who.name if who else "anonymous"


def _matches(doc: dict[str, Any], tag: str | None, q: str | None) -> bool:
    if tag and tag not in (doc.get("tags") or []):
        return False
    if q:
        needle = q.lower()
        hay = " ".join(str(doc.get(f, "")) for f in ("key", "name", "description")).lower()
        return needle in hay
    return True


async def list_docs(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env = env_param(request)
    state = await store(request).load_env(env)
    docs = state.flags if kind == "flag" else state.segments
    tag, q = request.query_params.get("tag"), request.query_params.get("q")
    items = [d for k, d in sorted(docs.items()) if _matches(d, tag, q)]
    return json_response({f"{kind}s": items, "env_version": state.version})


async def create(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env = env_param(request)
    wait = wait_param(request)
    body = await read_json(request)
    res = await store(request).put(env, kind, body, actor=_actor(who), create=True)
    return await write_response(request, env, res, wait, created=True)


async def get(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    doc = await store(request).get_doc(env, kind, key)
    return json_response(doc, headers={"ETag": f'"{doc.get("version", 0)}"'})


async def replace(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env = env_param(request)
    key = str(request.path_params["key"])
    wait = wait_param(request)
    body = await read_json(request)
    expected = expected_version(request, body)
    res = await store(request).put(env, kind, body, actor=_actor(who), expected=expected, key=key)
    return await write_response(request, env, res, wait, created=res.previous is None)


async def patch(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    wait = wait_param(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "a merge patch must be a JSON object", errors=[("", "not an object")])
    expected = expected_version(request, body)
    merge = {k: v for k, v in body.items() if k != "version"}
    res = await store(request).patch(env, kind, key, merge, actor=_actor(who), expected=expected)
    return await write_response(request, env, res, wait)


async def delete(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    wait = wait_param(request)
    expected = expected_version(request)
    res = await store(request).delete(env, kind, key, actor=_actor(who), expected=expected)
    return await write_response(request, env, res, wait)


async def copy(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    wait = wait_param(request)
    body = await read_json(request)
    to = body.get("to") if isinstance(body, dict) else None
    if not isinstance(to, str):
        raise Problem(422, "say where to copy to", errors=[("to", "required: an environment")])
    expected = expected_version(request, body)
    res = await store(request).copy(env, kind, key, to, actor=_actor(who), expected=expected)
    return await write_response(request, to, res, wait, created=res.previous is None)


async def history(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    s = store(request)
    previous = await s.history(env, kind, key)
    try:
        current: dict[str, Any] | None = await s.get_doc(env, kind, key)
    except Exception:
        current = None
    versions = ([current] if current else []) + previous
    return json_response(
        {
            "key": key,
            "current_version": current["version"] if current else None,
            "versions": versions,
        }
    )


async def restore(request: Request, who: Principal | None, *, kind: Kind) -> Response:
    env, key = env_param(request), key_param(request, kind)
    wait = wait_param(request)
    body = await read_json(request)
    version = body.get("version") if isinstance(body, dict) else None
    if type(version) is not int or version < 1:
        raise Problem(
            422,
            "say which version to restore",
            errors=[("version", "required: a positive integer")],
        )
    expected = expected_version(request, from_body=False)
    res = await store(request).restore(
        env, kind, key, version, actor=_actor(who), expected=expected
    )
    return await write_response(request, env, res, wait, created=res.previous is None)
