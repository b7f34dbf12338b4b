"""Admin handlers for scheduled changes: schedule, list, get, edit, cancel.

Why here and not in ``documents.py``: a scheduled change is a document of its
own (with a lifecycle: pending, running, applied, skipped, failed, missed,
cancelled) that names a flag, and the write it will make is checked now, when
a person can still fix it, not at 3 a.m. when it is due.  Execution is the
scheduler's (``release/scheduler.py``); this module only stores requests.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import audit_event, env_param, json_response, read_json, store
from flagwire_server.api.problems import Problem
from flagwire_server.release.schedule import (
    FINAL_STATUSES,
    STATUSES,
    iso_ms,
    parse_edit,
    parse_request,
)
from flagwire_server.services import services_of
from flagwire_server.store.documents import Conflict, NotFound, Store
from flagwire_server.store.types import _body, merge_patch, validate_doc


def _now_ms() -> int:
    return int(time.time() * 1000)


def _id(request: Request) -> str:
    change_id = str(request.path_params["id"])
    if not change_id.startswith("sch_") or len(change_id) > 40:
        raise Problem(404, f"scheduled change {change_id[:40]!r} does not exist")
    return change_id


async def _check_write(s: Store, env: str, fields: dict[str, Any]) -> int | None:
    """The flag's version now, after checking that the change would be a valid write today."""
    flag, action = fields["flag"], fields["action"]
    if not KEY_RE.match(flag):
        raise ValidationError([("flag", f"{flag[:80]!r} is not a valid flag key")])
    current: dict[str, Any] | None = None
    try:
        current = await s.get_doc(env, "flag", flag)
    except NotFound:
        await s.get_env(env)  # a missing environment is a 404
        if action != "replace":
            raise
    if action == "replace":
        validate_doc("flag", _body(fields["change"], flag))
    elif action == "restore":
        versions = [d.get("version") for d in await s.history(env, "flag", flag)]
        if fields["version"] not in versions and fields["version"] != (current or {}).get(
            "version"
        ):
            raise ValidationError(
                [("version", f"flag {flag!r} has no version {fields['version']}")]
            )
    else:
        assert current is not None
        if action == "rollout":  # the fallthrough is replaced whole, not merged
            merged = {**current, "fallthrough": fields["change"]}
        else:
            merged = merge_patch(current, fields["change"])
        validate_doc("flag", _body(merged, flag))
    version = (current or {}).get("version")
    return version if isinstance(version, int) else None


async def list_changes(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    flag, status = request.query_params.get("flag"), request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise Problem(400, f"status must be one of {', '.join(STATUSES)}")
    items = await services_of(request).schedules.list_changes(env, now_ms=_now_ms())
    items = [
        r
        for r in items
        if (flag is None or r.get("flag") == flag) and (status is None or r.get("status") == status)
    ]
    return json_response({"changes": items})


async def create(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    fields = parse_request(await read_json(request), now_ms=_now_ms())
    base = await _check_write(store(request), env, fields)
    services = services_of(request)
    record = {
        "id": services.schedules.new_id(),
        "env": env,
        **fields,
        "base_version": base,
        "status": "pending",
        "created_by": who.name if who else "anonymous",
        "created_at": _iso_now(),
    }
    await services.schedules.add(env, record)
    services.scheduler.poke()
    await audit_event(
        request,
        who,
        action="schedule",
        kind="schedule",
        key=record["id"],
        detail={"env": env, "flag": record["flag"], "due_at": record["due_at"]},
    )
    return json_response(record, 201)


async def get(request: Request, who: Principal | None) -> Response:
    env, change_id = env_param(request), _id(request)
    return json_response(await services_of(request).schedules.get(env, change_id, now_ms=_now_ms()))


async def edit(request: Request, who: Principal | None) -> Response:
    """Edit a pending change; the flag's version is read again (the edit is a new decision)."""
    env, change_id = env_param(request), _id(request)
    services = services_of(request)
    body = await read_json(request)
    current = await services.schedules.get(env, change_id)
    _final(current)
    record = parse_edit(current, body, now_ms=_now_ms())
    record["base_version"] = await _check_write(store(request), env, record)
    record["edited_by"] = who.name if who else "anonymous"
    record["edited_at"] = _iso_now()
    try:
        await services.schedules.update(env, record, now_ms=_now_ms())
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    services.scheduler.poke()
    await audit_event(
        request,
        who,
        action="edit",
        kind="schedule",
        key=change_id,
        detail={"env": env, "flag": record["flag"], "due_at": record["due_at"]},
    )
    return json_response(record)


async def cancel(request: Request, who: Principal | None) -> Response:
    env, change_id = env_param(request), _id(request)
    services = services_of(request)
    current = await services.schedules.get(env, change_id)
    _final(current)
    record = {
        **current,
        "status": "cancelled",
        "cancelled_by": who.name if who else "anonymous",
        "cancelled_at": _iso_now(),
    }
    try:
        await services.schedules.update(env, record, now_ms=_now_ms(), cancel=True)
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    await audit_event(
        request,
        who,
        action="cancel",
        kind="schedule",
        key=change_id,
        detail={"env": env, "flag": record["flag"]},
    )
    return json_response(record)


def _final(record: dict[str, Any]) -> None:
    if record.get("status") in FINAL_STATUSES:
        raise Problem(409, f"scheduled change {record['id']!r} is already {record['status']}")


def _iso_now() -> str:
    return iso_ms(_now_ms())
