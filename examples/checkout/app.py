"""A Starlette app that gates its checkout page on a flag, and shows it flip live.

Run it against a flagwire server::

    FLAGWIRE_URL=http://127.0.0.1:8080 FLAGWIRE_SDK_KEY=fw_sdk_... \\
        uvicorn examples.checkout.app:app --port 8000

or with no server at all, from a file of flag values::

    FLAGWIRE_OFFLINE=examples/checkout/flags.json uvicorn examples.checkout.app:app

Open http://127.0.0.1:8000/?user=alice and flip ``new-checkout`` in the
console (or ``flagwire flags off new-checkout``): the open page changes within
milliseconds, no reload.  The page is rendered with the flag's value, and
``/events`` streams each new value for that user (Server-Sent Events) from
``flags.watch()``.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse
from starlette.routing import Route

from flagwire import FlagClient

FLAG = "new-checkout"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Checkout</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 3rem; }}
 .new {{ background: #0b6; color: white; }} .old {{ background: #ddd; }}
 #box {{ padding: 2rem; border-radius: .5rem; font-size: 1.4rem; transition: background .3s; }}
</style></head>
<body>
<p>Signed in as <b>{user}</b> &middot; flagwire status: <span id="status">{status}</span></p>
<div id="box" class="{cls}">{text}</div>
<script>
  const box = document.getElementById("box");
  const events = new EventSource("/events?user={user_q}");
  events.onmessage = (e) => {{
    const on = JSON.parse(e.data).value;
    box.className = on ? "new" : "old";
    box.textContent = on ? "{new}" : "{old}";
  }};
</script>
</body></html>
"""

NEW = "New one-click checkout"
OLD = "Classic checkout"


def context(request: Request) -> dict[str, Any]:
    """The flag context for this request: who the user is."""
    user = request.query_params.get("user", "anonymous")
    return {"key": user, "email": f"{user}@example.com"}


def create_app(flags: FlagClient | None = None) -> Starlette:
    """Build the app; ``flags`` defaults to a client configured from the environment."""
    client = flags if flags is not None else client_from_env()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        status = await client.start()  # READY, STALE (persisted data) or defaults
        print(f"flagwire: started {status}: {client.status_message}")
        yield
        await client.close()

    async def checkout(request: Request) -> HTMLResponse:
        ctx = context(request)
        on = client.bool_variation(FLAG, ctx, False)  # microseconds, no I/O
        return HTMLResponse(
            PAGE.format(
                user=html.escape(ctx["key"]),
                user_q=html.escape(ctx["key"], quote=True),
                status=client.status,
                cls="new" if on else "old",
                text=NEW if on else OLD,
                new=NEW,
                old=OLD,
            )
        )

    async def events(request: Request) -> StreamingResponse:
        ctx = context(request)

        async def stream() -> AsyncIterator[bytes]:
            async for value in client.watch(FLAG, ctx, default=False):
                yield b"data: " + orjson.dumps({"flag": FLAG, "value": value}) + b"\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return Starlette(routes=[Route("/", checkout), Route("/events", events)], lifespan=lifespan)


def client_from_env() -> FlagClient:
    """A client for ``FLAGWIRE_URL`` + ``FLAGWIRE_SDK_KEY``, or ``FLAGWIRE_OFFLINE`` (a file)."""
    offline = os.environ.get("FLAGWIRE_OFFLINE")
    if offline:
        return FlagClient(offline_path=offline)
    # The saved snapshot lives in the OS temp dir, not in the working directory
    # (which is often a checkout): FLAGWIRE_PERSIST chooses another file.
    default_persist = os.path.join(tempfile.gettempdir(), "flagwire-checkout", "flags.json")
    return FlagClient(
        os.environ.get("FLAGWIRE_URL", "http://127.0.0.1:8080"),
        os.environ["FLAGWIRE_SDK_KEY"],
        persist_path=os.environ.get("FLAGWIRE_PERSIST", default_persist),
    )


def __getattr__(name: str) -> Starlette:
    # ``uvicorn examples.checkout.app:app`` builds the app on first access, so
    # importing this module (e.g. from tests) needs no environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
