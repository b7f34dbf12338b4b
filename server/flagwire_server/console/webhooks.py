"""The console's webhooks page: an environment's webhooks and their last deliveries.

Read-only, like the clients page: webhooks are created with the API or
``flagwire webhooks`` (the answer carrying the secret once is a terminal's or a
program's, not a page's that a browser may cache).  Built on ``pages.py``'s layout.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flagwire_server.console.render import guarded, layout, render, store_of
from flagwire_server.notify.hooks import public
from flagwire_server.services import services_of
from flagwire_server.sessions import Session

__all__ = ["routes"]

#: Delivery attempts shown per webhook.
SHOWN = 10


async def _webhooks(request: Request, session: Session) -> Response:
    env = request.path_params["env"]
    ctx = await layout(request, session, env, "webhooks")
    await store_of(request).get_env(env)
    store = services_of(request).webhooks
    hooks = []
    for record in await store.list_webhooks(env):
        hook = public(record)
        hook["deliveries"] = await store.deliveries(env, record["id"], SHOWN)
        hooks.append(hook)
    return render(request, "webhooks.html", hooks=hooks, **ctx)


def routes() -> list[BaseRoute]:
    return [Route("/envs/{env}/webhooks", guarded(_webhooks), name="console-webhooks")]
