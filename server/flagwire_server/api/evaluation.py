"""``POST /environments/{env}/evaluate``: flags evaluated on the server, for one context.

Why on the server: it answers for a whole environment (one flag or all of
them) for callers that cannot run the Python client, and it is the one admin
route an SDK key of that environment may call.  It evaluates on the
snapshot this process's mirror of the environment keeps current
(``stream/mirror.py``): each flag is compiled on its first use and stays
compiled until it changes, so repeated evaluations cost no compile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.evaluation import Snapshot
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import env_param, json_response, read_json, store
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of
from flagwire_server.stream.fanout import EnvNotFound

__all__ = ["current_snapshot", "evaluate"]

#: Seconds an evaluation waits for this process's mirror to catch up with a write.
_CATCH_UP_S = 2.0


async def evaluate(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise Problem(422, "expected an object", errors=[("", 'expected {"context": {...}}')])
    context, key = body.get("context"), body.get("flag")
    problems = []
    if not isinstance(context, dict):
        problems.append(("context", 'required: an object with a string "key"'))
    if key is not None and not isinstance(key, str):
        problems.append(("flag", "expected a flag key"))
    if problems:
        raise Problem(422, "invalid evaluation request", errors=problems)
    assert isinstance(context, dict)
    snap = await current_snapshot(request, env)
    if isinstance(key, str):
        detail = snap.evaluate(key, context, body.get("default"))
        return json_response({"key": key, **_detail(detail), "env_version": snap.version})
    details = snap.evaluate_all(context)
    return json_response(
        {"flags": {k: _detail(d) for k, d in details.items()}, "env_version": snap.version}
    )


async def current_snapshot(request: Request, env: str) -> Snapshot:
    """A compiled snapshot of ``env`` at least as new as the store's version.

    It is the snapshot of this process's fan-out mirror of the environment
    (kept current by its change-log reader), not a reload of every document
    per request.  Waiting for the mirror to reach the store's version keeps
    read-your-writes: a write answered before this request is reflected in it.
    """
    # NotFound → 404.  One read per batch of concurrent requests (api/freshness.py).
    info = await services_of(request).versions.read(env, store(request).get_env)
    fanout = services_of(request).fanout
    try:
        feed = await fanout.ensure(env)
    except EnvNotFound:
        raise Problem(404, f"environment {env!r} does not exist") from None
    deadline = time.monotonic() + _CATCH_UP_S
    while feed.version < info["version"] or feed.epoch != info["epoch"]:
        if time.monotonic() > deadline:  # mirror stuck (store trouble): read the store
            state = await store(request).load_env(env)
            return Snapshot(state.flags, state.segments, state.version, state.epoch)
        await asyncio.sleep(0.002)  # the mirror has no version event to wait on
    return feed.snapshot


def _detail(detail: Any) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(detail)
    data["reason"] = str(data["reason"])
    if data.get("error_kind") is not None:
        data["error_kind"] = str(data["error_kind"])
    return data
