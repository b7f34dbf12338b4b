"""Console pages of fleet insight: the connected SDK instances and the cleanup report.

Apart from ``pages.py`` (near its size limit) and built on its layout; the
flag page's evaluation chart is drawn in the browser by ``static/insight.js``
from ``GET /api/v1/environments/{env}/flags/{key}/insight``.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flagwire_server.api.insight import blocked_by, updated_ms
from flagwire_server.console.render import guarded, layout, render, store_of
from flagwire_server.services import services_of
from flagwire_server.sessions import Session
from flagwire_server.store.archive import FlagArchive
from flagwire_server.store.insight import DAY_MS

__all__ = ["routes"]


async def _clients(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "clients")
    info = await store_of(request).get_env(env)
    entries = await services_of(request).insight.store.clients(env)
    version = int(info.get("version", 0))
    for e in entries:
        e["lag"] = max(0, version - int(e.get("applied_version", 0)))
    return render(request, "clients.html", clients=entries, env_version=version, **ctx)


async def _cleanup(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    raw = request.query_params.get("days", "7")
    days = int(raw) if raw.isdigit() and 1 <= int(raw) <= 3650 else 7
    ctx = await layout(request, session, env, "cleanup")
    docs = {str(d["key"]): d for d in await store_of(request).list_docs(env, "flag")}
    ins = services_of(request).insight.store
    last = await ins.last_evaluated(env)
    since = int(time.time() * 1000) - days * DAY_MS
    rows = []
    for key, doc in sorted(docs.items()):
        lasted = last.get(key)
        served = await ins.variations_since(env, key, since) if lasted else set()
        updated = updated_ms(doc)
        blocked = blocked_by(doc, docs)
        reasons = []
        if lasted is None or lasted < since:
            reasons.append("not evaluated")
        elif len(served) == 1:
            reasons.append("one variation to everyone")
        if updated is not None and updated < since:
            reasons.append("unchanged")
        if blocked:
            reasons.append("blocked by " + ", ".join(blocked))
        if reasons:
            rows.append({"key": key, "on": bool(doc.get("on")), "last": lasted, "why": reasons})
    archived = await FlagArchive(store_of(request)).list(env)
    return render(request, "cleanup.html", rows=rows, days=days, archived=archived, **ctx)


def routes() -> list[BaseRoute]:
    return [
        Route("/envs/{env}/clients", guarded(_clients), name="console-clients"),
        Route("/envs/{env}/cleanup", guarded(_cleanup), name="console-cleanup"),
    ]
