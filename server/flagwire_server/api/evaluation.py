"""``POST /environments/{env}/evaluate``: flags evaluated on the server, for one context.

Why on the server: it answers for a whole environment (one flag or all of
them) for callers that cannot run the Python client, and it is the one admin
route an SDK key of that environment may call.  Snapshots are compiled once
per environment version and cached (``Services.snapshots``), so repeated
evaluations cost no compile.
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

_SNAPSHOTS_MAX = 64
#: Seconds an evaluation waits for this process's mirror to catch up with a write.
_CATCH_UP_S = 2.0
#: Past this many changed documents a full recompile is cheaper than one copy each.
_INCREMENTAL_MAX = 32


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

    The documents come from this process's fan-out mirror of the environment
    (kept current by its change-log reader), not from a reload of every
    document per request; only the flags and segments that changed since the
    cached snapshot are recompiled.  Waiting for the mirror to reach the
    store's version keeps read-your-writes: a write answered before this
    request is reflected in it.
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
    cache = services_of(request).snapshots
    snap = cache.get(env)
    if snap is None or snap.epoch != feed.epoch or snap.version > feed.version:
        snap = Snapshot(feed.flags, feed.segments, feed.version, feed.epoch)
    elif snap.version < feed.version:
        snap = _refreshed(snap, feed.flags, feed.segments, feed.version)
    cache[env] = snap
    cache.move_to_end(env)
    if len(cache) > _SNAPSHOTS_MAX:
        cache.popitem(last=False)
    return snap


def _refreshed(
    snap: Snapshot,
    flags: dict[str, dict[str, Any]],
    segments: dict[str, dict[str, Any]],
    version: int,
) -> Snapshot:
    """``snap`` brought to ``version``, recompiling only documents that changed.

    The mirror replaces a document object on every change, so identity tells
    which ones did.
    """
    changed = [doc for key, doc in flags.items() if snap.flags.get(key) is not doc]
    gone = snap.flags.keys() - flags.keys()
    seg_changed = [doc for key, doc in segments.items() if snap.segments.get(key) is not doc]
    seg_gone = snap.segments.keys() - segments.keys()
    if len(changed) + len(gone) + len(seg_changed) + len(seg_gone) > _INCREMENTAL_MAX:
        return Snapshot(flags, segments, version, snap.epoch)
    for doc in changed:
        snap = snap.with_flag(doc, version)
    for key in gone:
        snap = snap.without_flag(key, version)
    for doc in seg_changed:
        snap = snap.with_segment(doc, version)
    for key in seg_gone:
        snap = snap.without_segment(key, version)
    return snap if snap.version == version else Snapshot(flags, segments, version, snap.epoch)


def _detail(detail: Any) -> dict[str, Any]:
    data: dict[str, Any] = dataclasses.asdict(detail)
    data["reason"] = str(data["reason"])
    if data.get("error_kind") is not None:
        data["error_kind"] = str(data["error_kind"])
    return data
