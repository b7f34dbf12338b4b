"""The web console: server-rendered pages, a little plain JavaScript, session sign-in.

``routes()`` is mounted at ``/`` by ``app.py``; ``session.read_session`` is
what the admin API and the stream call to recognise a signed-in browser.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    """The console's pages, sign-in/out and static assets (paths outside ``/api/v1``)."""
    from flagwire_server.console import insight, releases, webhooks
    from flagwire_server.console.pages import build_routes

    return [*insight.routes(), *releases.routes(), *webhooks.routes(), *build_routes()]
