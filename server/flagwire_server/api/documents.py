"""Admin routes for flags and segments: list, get, create, replace, merge-patch,
delete, copy, history, restore.

Why one module for both: segments are managed exactly like flags (the store
takes the kind as a parameter), so the routes are built once per kind from the
same functions and cannot drift apart.  Writes answer
``{<kind>: doc, version, env_version, propagation?}``; ``?wait=<s>`` waits for
connected clients to acknowledge the change.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.model import KEY_RE
from flagwire_server.api.auth import Principal
from flagwire_server.api.problems import Problem
from flagwire_server.api.routing import (
    Param,
    api,
    env_param,
    expected_version,
    json_response,
    read_json,
    store,
    wait_param,
    write_response,
)
from flagwire_server.store.documents import Kind

_WRITE_ERRORS = (400, 404, 409, 413, 415, 422)


def _key(request: Request, kind: str) -> str:
    key = str(request.path_params["key"])
    if not KEY_RE.match(key):
        raise Problem(404, f"{kind} {key[:80]!r} does not exist")
    return key


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


def _register(kind: Kind, plural: str) -> None:
    title = kind.capitalize()
    schema = title  # component names: Flag / Segment
    base = f"/environments/{{env}}/{plural}"
    one = f"{base}/{{key}}"

    @api(
        "GET",
        base,
        operation_id=f"list{title}s",
        summary=f"List {plural}",
        tag=plural,
        responses={200: f"{title}List"},
        errors=(400, 404),
        query=(
            Param("tag", {"type": "string"}, "only documents with this tag"),
            Param("q", {"type": "string"}, "substring of key, name or description"),
        ),
    )
    async def list_docs(request: Request, who: Principal | None) -> Response:
        env = env_param(request)
        state = await store(request).load_env(env)
        docs = state.flags if kind == "flag" else state.segments
        tag, q = request.query_params.get("tag"), request.query_params.get("q")
        items = [d for k, d in sorted(docs.items()) if _matches(d, tag, q)]
        return json_response({plural: items, "env_version": state.version})

    @api(
        "POST",
        base,
        operation_id=f"create{title}",
        summary=f"Create a {kind} (409 if it exists)",
        tag=plural,
        responses={201: f"{title}Write"},
        body=f"{schema}Input",
        write=True,
        errors=_WRITE_ERRORS,
    )
    async def create(request: Request, who: Principal | None) -> Response:
        env = env_param(request)
        wait = wait_param(request)
        body = await read_json(request)
        res = await store(request).put(env, kind, body, actor=_actor(who), create=True)
        return await write_response(request, env, res, wait, created=True)

    @api(
        "GET",
        one,
        operation_id=f"get{title}",
        summary=f"Get a {kind}",
        tag=plural,
        responses={200: schema},
        errors=(400, 404),
    )
    async def get(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
        doc = await store(request).get_doc(env, kind, key)
        return json_response(doc, headers={"ETag": f'"{doc.get("version", 0)}"'})

    @api(
        "PUT",
        one,
        operation_id=f"replace{title}",
        summary=f"Replace a {kind} (creates it when absent)",
        tag=plural,
        responses={200: f"{title}Write", 201: f"{title}Write"},
        body=f"{schema}Input",
        write=True,
        errors=_WRITE_ERRORS,
    )
    async def replace(request: Request, who: Principal | None) -> Response:
        env = env_param(request)
        key = str(request.path_params["key"])
        wait = wait_param(request)
        body = await read_json(request)
        expected = expected_version(request, body)
        res = await store(request).put(
            env, kind, body, actor=_actor(who), expected=expected, key=key
        )
        return await write_response(request, env, res, wait, created=res.previous is None)

    @api(
        "PATCH",
        one,
        operation_id=f"patch{title}",
        summary=f'Merge-patch a {kind} (RFC 7386; {{"on": false}} is the kill switch)',
        tag=plural,
        responses={200: f"{title}Write"},
        body="MergePatch",
        write=True,
        errors=_WRITE_ERRORS,
    )
    async def patch(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
        wait = wait_param(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Problem(
                422, "a merge patch must be a JSON object", errors=[("", "not an object")]
            )
        expected = expected_version(request, body)
        merge = {k: v for k, v in body.items() if k != "version"}
        res = await store(request).patch(
            env, kind, key, merge, actor=_actor(who), expected=expected
        )
        return await write_response(request, env, res, wait)

    @api(
        "DELETE",
        one,
        operation_id=f"delete{title}",
        summary=f"Delete a {kind}",
        tag=plural,
        responses={200: f"{title}Write"},
        write=True,
        errors=(400, 404, 409),
    )
    async def delete(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
        wait = wait_param(request)
        expected = expected_version(request)
        res = await store(request).delete(env, kind, key, actor=_actor(who), expected=expected)
        return await write_response(request, env, res, wait)

    @api(
        "POST",
        f"{one}/copy",
        operation_id=f"copy{title}",
        summary=f"Copy a {kind} to another environment (create or replace there)",
        tag=plural,
        responses={200: f"{title}Write", 201: f"{title}Write"},
        body="CopyRequest",
        write=True,
        errors=_WRITE_ERRORS,
    )
    async def copy(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
        wait = wait_param(request)
        body = await read_json(request)
        to = body.get("to") if isinstance(body, dict) else None
        if not isinstance(to, str):
            raise Problem(422, "say where to copy to", errors=[("to", "required: an environment")])
        expected = expected_version(request, body)
        res = await store(request).copy(env, kind, key, to, actor=_actor(who), expected=expected)
        return await write_response(request, to, res, wait, created=res.previous is None)

    @api(
        "GET",
        f"{one}/history",
        operation_id=f"history{title}",
        summary=f"A {kind}'s versions, newest first (the current one first when it exists)",
        tag=plural,
        responses={200: "History"},
        errors=(400, 404),
    )
    async def history(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
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

    @api(
        "POST",
        f"{one}/restore",
        operation_id=f"restore{title}",
        summary=f"Restore an earlier version of a {kind} as a new change",
        tag=plural,
        responses={200: f"{title}Write", 201: f"{title}Write"},
        body="RestoreRequest",
        write=True,
        errors=_WRITE_ERRORS,
    )
    async def restore(request: Request, who: Principal | None) -> Response:
        env, key = env_param(request), _key(request, kind)
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


_register("flag", "flags")
_register("segment", "segments")
