"""Console sessions over real HTTP and WebSockets (no browser): bounds, binding, secrets.

Each test runs its own ``flagwire serve`` on the shared Redis with a prefix of
its own; sign-in goes through the real form (Origin check and double-submit token).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(90)

#: Clients made by sign_in, closed after each test (an unclosed one's socket was found
#: later by the next app's gc.collect(), as a ResourceWarning blamed on another test).
_signed_in: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_signed_in() -> Iterator[None]:
    yield
    while _signed_in:
        _signed_in.pop().close()


def sign_in(url: str, key: str) -> tuple[httpx.Client, str]:
    """A client signed in to the console at ``url`` with ``key``, and its CSRF token."""
    c = httpx.Client(base_url=url, headers={"Origin": url}, timeout=10)
    _signed_in.append(c)
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


# --- sessions end with their credential, and with sign-out -------------------------------


async def test_sign_out_closes_console_streams_on_every_instance_within_a_second(
    make_server: Callable[..., ServerProcess],
) -> None:
    shared = {"FLAGWIRE_SESSION_SECRET": "test-secret-" + "s" * 32}
    a, b = make_server(env=shared), make_server(env=shared)
    c, csrf = sign_in(a.url, a.admin_key)
    here = await open_console_stream(a, c)
    there = await open_console_stream(b, c)  # the same session, used on another instance
    copied = cookie_header(c)  # the browser forgets the cookie at sign-out; a copy does not
    r = c.post("/signout", data={"csrf": csrf}, headers={"Origin": a.url})
    assert r.status_code == 303
    (code_here, t_here), (code_there, t_there) = await asyncio.gather(
        closed_within(here, 5), closed_within(there, 5)
    )
    assert (code_here, code_there) == (4001, 4001)
    assert t_here < 1.0
    assert t_there < 1.0
    # The copied cookie is dead on both instances, for the API and the stream.
    async with httpx.AsyncClient() as http:
        for server in (a, b):
            r = await http.get(server.url + "/api/v1/environments", headers=copied)
            assert r.status_code == 401
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(
                    server.ws_url + "?env=production", additional_headers=copied
                )


async def test_revoking_the_key_ends_its_sessions_and_streams(console: ServerProcess) -> None:
    made = console.api("POST", "/keys", {"name": "on call", "kind": "admin"})
    c, _ = sign_in(console.url, made["secret"])
    ws = await open_console_stream(console, c)
    console.api("DELETE", f"/keys/{made['key']['id']}")
    code, took = await closed_within(ws, 5)
    assert code == 4001
    assert took < 1.0
    assert c.get("/api/v1/environments").status_code == 401
    assert c.get("/envs/production/flags").status_code == 303  # back to sign-in


async def test_rotating_the_admin_key_ends_sessions_made_with_the_old_one(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server()
    old, _ = sign_in(server.url, server.admin_key)
    # A restart with the same key keeps the session (same data directory, same secret) ...
    server.restart()
    assert old.get("/api/v1/environments").status_code == 200
    # ... a restart with a new FLAGWIRE_ADMIN_KEY ends it, and every stream it could open.
    server.stop()
    server.admin_key = server.admin_key + "-rotated"
    server.start()
    assert old.get("/api/v1/environments").status_code == 401
    assert old.get("/envs/production/flags").status_code == 303
    with pytest.raises(websockets.InvalidStatus):
        await open_console_stream(server, old)
    # Sessions made with the new key work.
    new, csrf = sign_in(server.url, server.admin_key)
    r = new.post(
        "/api/v1/keys", json={"name": "x", "kind": "admin"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 201


def test_nothing_in_the_store_signs_in(console: ServerProcess, redis_url: str) -> None:
    c, csrf = sign_in(console.url, console.admin_key)
    cookie = c.cookies["fw_session"]
    r = redis.Redis.from_url(redis_url)
    values: list[bytes] = []
    for k in r.scan_iter(match=f"{console.prefix}:*"):
        t = r.type(k)
        values.append(k)
        if t == b"hash":
            for f, v in r.hgetall(k).items():
                values += [f, v]
        elif t == b"string":
            values.append(r.get(k) or b"")
        elif t == b"stream":
            for _id, fields in r.xrange(k):
                for f, v in fields.items():
                    values += [f, v]
        elif t == b"list":
            values += r.lrange(k, 0, -1)
    r.close()
    blob = b"\n".join(values)
    sid = cookie.split(".")[0]
    for secret_part in (cookie.encode(), sid.encode(), csrf.encode(), console.admin_key.encode()):
        assert secret_part not in blob
    # The signing secret lives in the data directory, private to the server's user.
    secret_file = console.data_dir / "session-secret"
    assert secret_file.read_bytes() not in blob
    assert secret_file.stat().st_mode & 0o077 == 0
    # No stored value works as a session cookie, a bearer key or a CSRF token.
    for value in {v for v in values if 8 <= len(v) <= 400}:
        text = value.decode(errors="replace")
        for probe in (
            {"Cookie": f"fw_session={text}"},
            {"Authorization": f"Bearer {text}"},
        ):
            status = httpx.get(console.url + "/api/v1/keys", headers=probe).status_code
            assert status in (401, 429), (probe, status)
        forged = c.post(
            "/api/v1/environments", json={"key": "forged"}, headers={"X-CSRF-Token": text}
        )
        assert forged.status_code in (403, 429)
