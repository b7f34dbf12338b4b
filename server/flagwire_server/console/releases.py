"""Console pages of release automation: the plans and scheduled changes of an environment,
and one plan's timeline.

Apart from ``pages.py`` (near its size limit) and built on its layout, like
``console/insight.py``.  The pages carry the plan's JSON; ``static/releases.js``
draws the timeline (stages, the current one, hold progress), the guards'
readings as inline SVG charts and the buttons from it, refreshes both from the
REST API every two seconds, and sends every operation through the admin API
with the session's CSRF token, so it is validated and audited like the CLI's.
The flag page's list of its scheduled changes and plans is drawn by the same
script from ``GET .../schedule?flag=`` and ``GET .../releases?flag=``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flagwire_server.console import present
from flagwire_server.console.render import guarded, layout, render, store_of
from flagwire_server.services import services_of
from flagwire_server.sessions import Session

__all__ = ["routes"]


def _view(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan as the API shows it (``api/releases.py``): no copy of the flag before it."""
    out = {k: v for k, v in plan.items() if k not in ("before", "base", "stage_base")}
    out["before_version"] = (plan.get("before") or {}).get("version")
    return out


async def _releases(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "releases")
    plans = [_view(p) for p in await services_of(request).plans.list_plans(env)]
    changes = await services_of(request).schedules.list_changes(env)
    changes.sort(key=lambda c: (c.get("status") != "pending", int(c.get("due_ms", 0))))
    return render(request, "releases.html", plans=plans, changes=changes, **ctx)


async def _plan(request: Request, session: Session) -> Response:
    env, plan_id = request.path_params["env"], str(request.path_params["id"])
    ctx = await layout(request, session, env, "releases")
    plan = _view(await services_of(request).plans.get(env, plan_id))
    flag = await store_of(request).get_doc(env, "flag", plan["flag"])
    labels = [present.label(v) for v in flag.get("variations") or []]
    return render(request, "release.html", plan=plan, labels=labels, **ctx)


def routes() -> list[BaseRoute]:
    return [
        Route("/envs/{env}/releases", guarded(_releases), name="console-releases"),
        Route("/envs/{env}/releases/{id}", guarded(_plan), name="console-release"),
    ]
