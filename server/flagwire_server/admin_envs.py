"""Admin routes for environments, their audit log, change propagation and evaluation.

Why evaluation is here: it answers for a whole environment (one flag or all of
them) for callers that cannot run the Python client, and it is the one admin
route an SDK key of that environment may call.  Snapshots are compiled once
per environment version and cached, so repeated evaluations cost no compile.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire._evaluation import Snapshot

from .admin import Param, api, env_param, int_param, json_response, read_json, store
from .auth import Principal
from .problems import Problem

_SNAPSHOTS_MAX = 64


async def _connected(request: Request, env: str) -> int | None:
    """Connected clients of ``env`` across instances, when the fan-out can tell."""
    fanout = getattr(request.app.state, "fanout", None)
    for name in ("connected_all", "connected_total", "connected"):
        fn = getattr(fanout, name, None)
        if callable(fn):
            try:
                value = fn(env)
                if inspect.isawaitable(value):
                    value = await value
            except Exception:
                return None
            return value if isinstance(value, int) else None
    return None


@api("GET", "/environments", operation_id="listEnvironments", summary="List environments",
     tag="environments", responses={200: "EnvironmentList"})
async def list_envs(request: Request, who: Principal | None) -> Response:
    return json_response({"environments": await store(request).list_envs()})


@api("POST", "/environments", operation_id="createEnvironment",
     summary="Create an environment (409 if it exists)", tag="environments",
     responses={201: "Environment"}, body="EnvironmentInput", errors=(400, 409, 413, 415, 422))
async def create_env(request: Request, who: Principal | None) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", "expected {\"key\": ..., \"name\"}")])
    unknown = sorted(set(body) - {"key", "name"})
    if unknown:
        raise Problem(422, "unknown fields", errors=[(u, "unknown field") for u in unknown])
    info = await store(request).create_env(body.get("key"), body.get("name") or "")  # type: ignore[arg-type]
    return json_response({**info, "connected": 0}, 201)


@api("GET", "/environments/{env}", operation_id="getEnvironment", summary="Get an environment",
     tag="environments", responses={200: "Environment"}, errors=(404,))
async def get_env(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    info = await store(request).get_env(env)
    return json_response({**info, "connected": await _connected(request, env)})


@api("DELETE", "/environments/{env}", operation_id="deleteEnvironment",
     summary="Delete an environment and all its flags, segments, history and audit",
     tag="environments", responses={204: None}, errors=(404,))
async def delete_env(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).delete_env(env)
    snapshots = getattr(request.app.state, "admin_snapshots", None)
    if snapshots is not None:
        snapshots.pop(env, None)
    return Response(status_code=204)


@api("GET", "/environments/{env}/audit", operation_id="listAudit",
     summary="The audit log of an environment, newest first", tag="environments",
     responses={200: "AuditPage"}, errors=(400, 404),
     query=(Param("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
            Param("before", {"type": "string", "pattern": r"^\d{1,20}-\d{1,20}$"},
                  "the cursor from the previous page's next")))
async def audit(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    limit = int_param(request, "limit", 50, 1, 500)
    before = request.query_params.get("before")
    if before is not None:
        left, _, right = before.partition("-")
        if not (left.isdigit() and right.isdigit() and len(left) <= 20 and len(right) <= 20):
            raise Problem(400, "before must be a cursor such as 1700000000000-0",
                          errors=[("before", f"got {before[:40]!r}")])
    entries, cursor = await store(request).audit(env, limit, before)
    return json_response({"entries": [e.to_json() for e in entries], "next": cursor})


@api("GET", "/environments/{env}/changes/{version}", operation_id="getChange",
     summary="Propagation figures of a recent change", tag="environments",
     responses={200: "Change"}, errors=(404,))
async def change(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    raw = str(request.path_params["version"])
    if not raw.isdigit() or not 0 < int(raw) < 2**53:
        raise Problem(404, f"no change {raw[:40]!r} in {env!r}")
    version = int(raw)
    s = store(request)
    entries: list[Any] = list(
        await s.redis.xrange(s.key(env, "changes"), f"{version}-0", f"{version}-0") or []
    )
    if not entries:
        await s.get_env(env)  # 404 for a missing environment first
        raise Problem(404, f"change {version} of {env!r} is not in the change log")
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
              else v) for k, v in entries[0][1].items()}
    out: dict[str, Any] = {
        "version": version, "key": fields.get("k", ""), "actor": fields.get("a", ""),
        "committed_ms": int(fields.get("t", "0") or 0), "connected": None, "acknowledged": None,
        "lost": None, "complete": None, "p50_ms": None, "p99_ms": None, "max_ms": None,
    }
    fanout = getattr(request.app.state, "fanout", None)
    figures = getattr(fanout, "propagation", None)
    if callable(figures):
        result = figures(env, version)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, dict):
            out.update({k: v for k, v in result.items() if k != "version"})
    return json_response(out)


def _snapshot_cache(request: Request) -> OrderedDict[str, Snapshot]:
    cache: OrderedDict[str, Snapshot] | None = getattr(request.app.state, "admin_snapshots", None)
    if cache is None:
        cache = OrderedDict()
        request.app.state.admin_snapshots = cache
    return cache


@api("POST", "/environments/{env}/evaluate", operation_id="evaluate",
     summary="Evaluate one flag or all flags for a context (admin key or an SDK key of env)",
     tag="evaluation", responses={200: "Evaluation"}, body="EvaluateRequest", auth="sdk",
     errors=(400, 404, 413, 415, 422))
async def evaluate(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", "expected {\"context\": {...}}")])
    context, key = body.get("context"), body.get("flag")
    problems = []
    if not isinstance(context, dict):
        problems.append(("context", "required: an object with a string \"key\""))
    if key is not None and not isinstance(key, str):
        problems.append(("flag", "expected a flag key"))
    if problems:
        raise Problem(422, "invalid evaluation request", errors=problems)
    assert isinstance(context, dict)
    state = await store(request).load_env(env)
    cache = _snapshot_cache(request)
    snap = cache.get(env)
    if snap is None or snap.version != state.version or snap.epoch != state.epoch:
        snap = Snapshot(state.flags, state.segments, state.version, state.epoch)
        cache[env] = snap
        if len(cache) > _SNAPSHOTS_MAX:
            cache.popitem(last=False)
    cache.move_to_end(env)
    if isinstance(key, str):
        detail = snap.evaluate(key, context, body.get("default"))
        return json_response({"key": key, **_detail(detail), "env_version": snap.version})
    details = snap.evaluate_all(context)
    return json_response({"flags": {k: _detail(d) for k, d in details.items()},
                          "env_version": snap.version})


def _detail(detail: Any) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(detail)
    data["reason"] = str(data["reason"])
    if data.get("error_kind") is not None:
        data["error_kind"] = str(data["error_kind"])
    return data
