"""Admin handlers for release plans: start, list, get, operate; templates.

The plans' logic is in ``release/runner.py`` (I/O) and ``release/plan.py``
(pure); these handlers read requests, call it and translate its refusals.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.errors import ValidationError
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import env_param, json_response, read_json, store
from flagwire_server.api.problems import Problem
from flagwire_server.release.plan import TEMPLATES, parse_stages
from flagwire_server.release.runner import OPERATIONS, PlanBusy
from flagwire_server.services import services_of
from flagwire_server.store.documents import Conflict


def _actor(who: Principal | None) -> str:
    return who.name if who else "anonymous"


def _view(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan as the API shows it: the flag before the plan is summarised, not repeated."""
    out = {k: v for k, v in plan.items() if k not in ("before", "base", "stage_base")}
    out["before_version"] = (plan.get("before") or {}).get("version")
    return out


async def start(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    body = await read_json(request)
    try:
        plan = await services_of(request).releases.start(env, body, actor=_actor(who))
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    return json_response(_view(plan), 201)


async def list_plans(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    flag = request.query_params.get("flag")
    plans = await services_of(request).plans.list_plans(env)
    return json_response({"plans": [_view(p) for p in plans if flag in (None, p["flag"])]})


async def get(request: Request, who: Principal | None) -> Response:
    env, plan_id = env_param(request), str(request.path_params["id"])
    return json_response(_view(await services_of(request).plans.get(env, plan_id)))


async def readings(request: Request, who: Principal | None) -> Response:
    env, plan_id = env_param(request), str(request.path_params["id"])
    plans = services_of(request).plans
    await plans.get(env, plan_id)
    return json_response({"readings": await plans.readings(env, plan_id)})


async def operate(request: Request, who: Principal | None) -> Response:
    env, plan_id = env_param(request), str(request.path_params["id"])
    op = str(request.path_params["op"])
    if op not in OPERATIONS:
        raise Problem(404, f"no operation {op[:40]!r}; expected one of {', '.join(OPERATIONS)}")
    try:
        plan = await services_of(request).releases.operate(env, plan_id, op, actor=_actor(who))
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    except PlanBusy as exc:
        raise Problem(409, str(exc), headers={"Retry-After": "1"}) from None
    return json_response(_view(plan))


async def templates(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    own = await services_of(request).plans.templates(env)
    return json_response({"templates": {**TEMPLATES, **own}})


async def put_template(request: Request, who: Principal | None) -> Response:
    env, name = env_param(request), str(request.path_params["name"])
    if not name.isidentifier() or len(name) > 64:
        raise Problem(422, "a template name is a word of letters, digits and _ (up to 64)")
    await store(request).get_env(env)
    body = await read_json(request)
    stages = parse_stages(body.get("stages") if isinstance(body, dict) else None)
    if name in TEMPLATES:
        raise ValidationError([("name", f"{name!r} is a built-in template")])
    await services_of(request).plans.put_template(env, name, stages)
    return json_response({"name": name, "stages": stages})
