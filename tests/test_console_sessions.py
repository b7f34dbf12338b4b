"""Console sessions over real HTTP and WebSockets (no browser): bounds, binding, secrets.

Each test runs its own ``flagwire serve`` on the shared Redis with a prefix of
its own; sign-in goes through the real form (Origin check and double-submit token).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(90)


def sign_in(url: str, key: str) -> tuple[httpx.Client, str]:
    """A client signed in to the console at ``url`` with ``key``, and its CSRF token."""
    c = httpx.Client(base_url=url, headers={"Origin": url}, timeout=10)
    login = re.search(r'name="csrf" value="([^"]+)"', c.get("/signin").text)
    assert login is not None
    r = c.post("/signin", data={"csrf": login.group(1), "key": key, "next": "/"})
    assert r.status_code == 303, r.text[:300]
    page = c.get("/", follow_redirects=True).text
    meta = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert meta is not None
    return c, meta.group(1)


def cookie_header(c: httpx.Client) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in c.cookies.items())}


async def open_console_stream(server: ServerProcess, c: httpx.Client) -> Any:
    ws = await websockets.connect(
        server.ws_url + "?env=production", additional_headers=cookie_header(c)
    )
    assert json.loads(await ws.recv())["type"] == "hello"
    assert json.loads(await ws.recv())["type"] == "snapshot"
    return ws


async def closed_within(ws: Any, seconds: float) -> tuple[int | None, float]:
    """Wait for the server to close ``ws``; returns its close code and how long it took."""
    start = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    except websockets.ConnectionClosed:
        return ws.close_code, time.monotonic() - start


@pytest.fixture
def console(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server()


# --- item: bounded forms -------------------------------------------------------------


def test_sign_in_and_out_forms_are_bounded_before_parsing(console: ServerProcess) -> None:
    url = console.url
    c = httpx.Client(base_url=url, headers={"Origin": url}, timeout=10)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for path in ("/signin", "/signout"):
        # Announced too large: refused before a byte is read.
        big = b"key=" + b"x" * (1024 * 1024)
        assert c.post(path, content=big, headers=form).status_code == 413
        # Streamed without a length: refused once past the cap.
        chunks = (b"a" * 65536 for _ in range(64))
        assert c.post(path, content=chunks, headers=form).status_code == 413
        # Many small fields: refused, not parsed.
        many = "&".join(f"f{i}=v" for i in range(400)).encode()
        assert c.post(path, content=many, headers=form).status_code == 400
        # Multipart (file uploads) is not a sign-in form.
        r = c.post(path, files={"key": ("k.txt", b"x" * 100)})
        assert r.status_code == 415
    # The real forms still work.
    signed, _ = sign_in(url, console.admin_key)
    assert signed.get("/api/v1/environments").status_code == 200
    c.close()
    signed.close()
