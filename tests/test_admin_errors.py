"""Every refusal of the admin API: status, RFC 9457 body, and nothing stored."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flagwire.core.limits import STREAM_PATH
from tests.support.builders import clause, flag, rule
from tests.support.redisproc import RedisProcess
from tests.test_admin_support import Live, live_server, redis_dump, start_server, stop_server


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


pytestmark = pytest.mark.timeout(90)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert isinstance(body["errors"], list)
    return body


@pytest.fixture
def env(live: Live) -> Iterator[str]:
    name = f"e{uuid.uuid4().hex[:8]}"
    live.api.post("/environments", json={"key": name})
    live.api.post(f"/environments/{name}/flags", json=flag("f"))
    return name


def test_refusals_store_nothing(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/flags"
    before = redis_dump(live)

    # 401: no key, unknown key, wrong scheme.
    anon = httpx.Client(base_url=live.base)
    problem(anon.post(base, json=flag("g")), 401)
    problem(anon.post(base, json=flag("g"), headers={"Authorization": "Bearer fw_admin_nope"}), 401)
    problem(
        anon.patch(
            f"{base}/f", json={"on": False}, headers={"Authorization": f"Basic {live.admin_key}"}
        ),
        401,
    )

    # 403: an SDK key on admin routes.
    sdk_secret = api.post("/keys", json={"name": "s", "kind": "sdk", "env": env}).json()["secret"]
    before = redis_dump(live)  # the key is stored; from here on nothing may be
    sdk = httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {sdk_secret}"})
    assert "admin key" in problem(sdk.patch(f"{base}/f", json={"on": False}), 403)["detail"]
    problem(sdk.post("/keys", json={"name": "x", "kind": "admin"}), 403)
    problem(sdk.delete(f"/environments/{env}"), 403)

    # 400: not JSON, bad If-Match, bad wait, bad query.
    problem(api.post(base, content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    problem(api.post(base, content=b"", headers={"Content-Type": "application/json"}), 400)
    problem(api.patch(f"{base}/f", json={"on": False}, headers={"If-Match": "yesterday"}), 400)
    body = problem(api.patch(f"{base}/f", json={"on": False}, params={"wait": "99"}), 400)
    assert body["errors"][0]["path"] == "wait"
    problem(api.get(f"/environments/{env}/audit", params={"limit": "0"}), 400)
    problem(api.get(f"/environments/{env}/audit", params={"before": "x"}), 400)

    # 422: invalid documents name the path of each problem.
    bad = flag("g", rules=[rule(clause("email", "startswith", "a"), variation=5)])
    errors = problem(api.post(base, json=bad), 422)["errors"]
    paths = {e["path"] for e in errors}
    assert "rules[0].clauses[0].op" in paths
    assert "rules[0].variation" in paths
    assert {
        e["path"] for e in problem(api.patch(f"{base}/f", json={"onn": True}), 422)["errors"]
    } == {"onn"}
    problem(api.put(f"{base}/f", json=flag("other")), 422)  # key mismatch
    problem(api.post(base, json=[1, 2]), 422)
    problem(api.put(f"{base}/Bad Key!", json=flag("x")), 422)
    problem(api.post("/environments", json={"key": "Bad{Env}"}), 422)
    problem(api.post("/keys", json={"name": "", "kind": "root"}), 422)
    problem(api.post("/keys", json={"name": "k", "kind": "sdk", "env": "nowhere"}), 422)
    problem(api.post(f"/environments/{env}/evaluate", json={"context": 3}), 422)
    problem(api.post(f"{base}/f/restore", json={"version": "1"}), 422)

    # 404: unknown environment, flag, key, version, path.
    problem(api.get("/environments/nowhere"), 404)
    problem(api.patch(f"{base}/ghost", json={"on": False}), 404)
    problem(api.post("/environments/nowhere/flags", json=flag("g")), 404)
    problem(api.delete("/keys/key_nope"), 404)
    problem(api.post(f"{base}/f/restore", json={"version": 42}), 404)

    # 405 with Allow; 409 with the current version.
    r = api.put("/environments")
    assert "POST" in r.headers["allow"]
    problem(r, 405)
    assert problem(api.post(base, json=flag("f")), 409)["current_version"] == 1
    assert (
        problem(api.patch(f"{base}/f", json={"on": False, "version": 3}), 409)["current_version"]
        == 1
    )

    # 413 over the body limit (with and without a Content-Length); 415 not JSON.
    huge = b'{"key": "g", "description": "' + b"x" * (600 * 1024) + b'"}'
    problem(api.post(base, content=huge, headers={"Content-Type": "application/json"}), 413)
    problem(api.post(base, content=iter([huge]), headers={"Content-Type": "application/json"}), 413)
    problem(api.post(base, content=b"key=g", headers={"Content-Type": "text/plain"}), 415)

    assert redis_dump(live) == before
    assert api.get(f"{base}/f").json()["version"] == 1
    anon.close()
    sdk.close()


def test_unknown_api_path_is_a_problem(live: Live) -> None:
    problem(live.api.get("/no/such/thing"), 404)
    problem(live.api.post("/environments/x/unknown", json={}), 404)
    problem(httpx.get(live.url + STREAM_PATH), 404)  # the stream is WebSocket only


@pytest.fixture
def strict(redis_url: str) -> Iterator[tuple[str, str]]:
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    server = start_server(redis_url, prefix, FLAGWIRE_RATE_LIMIT="5", FLAGWIRE_AUTH_FAIL_LIMIT="3")
    try:
        yield server.url, server.admin_key
    finally:
        stop_server(server)


def test_rate_limits(strict: tuple[str, str]) -> None:
    url, key = strict
    api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {key}"})
    statuses = [api.get("/environments").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5
    assert statuses[-1] == 429
    limited = api.get("/environments")
    assert int(problem(limited, 429) and limited.headers["retry-after"]) >= 1
    # Repeated bad keys from one address are limited too, even when the next key is right.
    bad = httpx.Client(base_url=url + "/api/v1")
    codes = [
        bad.get("/keys", headers={"Authorization": f"Bearer wrong{i}"}).status_code
        for i in range(5)
    ]
    assert codes[:3] == [401] * 3
    assert codes[-1] == 429
    api.close()
    bad.close()


def test_store_unavailable_is_503(private_redis: RedisProcess) -> None:
    server = start_server(private_redis.url, "fw")
    url, key = server.url, server.admin_key
    try:
        api = httpx.Client(
            base_url=url + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert api.post("/environments/production/flags", json=flag("f")).status_code == 201
        private_redis.stop()
        t0 = time.monotonic()
        r = api.patch("/environments/production/flags/f", json={"on": False})
        body = problem(r, 503)
        assert "store unavailable" in body["detail"]
        assert time.monotonic() - t0 < 15
        private_redis.start()
        deadline = time.monotonic() + 15
        while True:
            r = api.get("/environments/production/flags/f")
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.json()["version"] == 1  # the refused write left nothing behind
        assert r.json()["on"] is True
        api.close()
    finally:
        stop_server(server)


def test_console_session_needs_csrf_for_writes(live: Live) -> None:
    import re

    browser = httpx.Client(base_url=live.url, headers={"Origin": live.url})
    form = browser.get("/signin")
    if form.status_code == 404:
        pytest.skip("console not installed")
    login = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login is not None
    r = browser.post("/signin", data={"csrf": login.group(1), "key": live.admin_key, "next": "/"})
    assert r.status_code == 303, r.text[:300]
    meta = re.search(
        r'name="csrf-token" content="([^"]+)"', browser.get("/", follow_redirects=True).text
    )
    assert meta is not None
    assert browser.get("/api/v1/environments").status_code == 200  # reads need no token
    name = f"s{uuid.uuid4().hex[:8]}"
    problem(browser.post("/api/v1/environments", json={"key": name}), 403)
    problem(
        browser.post(
            "/api/v1/environments", json={"key": name}, headers={"X-CSRF-Token": "forged"}
        ),
        403,
    )
    assert live.api.get(f"/environments/{name}").status_code == 404  # nothing stored
    ok = browser.post(
        "/api/v1/environments", json={"key": name}, headers={"X-CSRF-Token": meta.group(1)}
    )
    assert ok.status_code == 201
    audit_actor = browser.post(
        f"/api/v1/environments/{name}/flags",
        json=flag("f"),
        headers={"X-CSRF-Token": meta.group(1)},
    ).json()["flag"]
    assert audit_actor["updated_by"] == "test admin"  # the session's key name
    browser.close()


def test_failed_script_leaves_nothing_half_written(live: Live, env: str) -> None:
    """A write the Lua script refuses (a damaged key) changes nothing at all."""
    audit_key = f"{live.prefix}:{{{env}}}:audit"
    saved = live.redis.xrange(audit_key)
    live.redis.delete(audit_key)
    live.redis.set(audit_key, "damaged")
    before = redis_dump(live, env)
    body = problem(live.api.patch(f"/environments/{env}/flags/f", json={"on": False}), 500)
    assert "nothing was written" in body["detail"]
    assert redis_dump(live, env) == before
    live.redis.delete(audit_key)
    for _id, fields in saved:
        live.redis.xadd(audit_key, fields)
    r = live.api.patch(f"/environments/{env}/flags/f", json={"on": False})
    assert (r.json()["version"], r.json()["env_version"]) == (2, 2)


def test_deeply_nested_bodies_are_a_problem_not_a_500(live: Live, env: str) -> None:
    deep = b'{"a":' * 990 + b"{}" + b"}" * 990
    json_type = {"Content-Type": "application/json"}
    before = redis_dump(live, env)
    body = problem(
        live.api.patch(f"/environments/{env}/flags/f", content=deep, headers=json_type), 422
    )
    assert "deeper than 64" in body["detail"]
    nested: Any = [0]
    for _ in range(200):
        nested = [nested]
    problem(
        live.api.put(f"/environments/{env}/flags/f", json=flag("f", variations=[nested, [1]])), 422
    )
    problem(live.api.post("/keys", content=b'{"name":' + deep + b"}", headers=json_type), 422)
    assert redis_dump(live, env) == before
    # 64 levels are still accepted (a JSON variation may be nested).
    ok: Any = 1
    for _ in range(60):
        ok = [ok]
    r = live.api.put(f"/environments/{env}/flags/f", json=flag("f", variations=[ok, [2]]))
    assert r.status_code == 200, r.text


def test_a_write_that_would_overflow_the_clients_snapshot_is_refused(live: Live) -> None:
    name = f"big{uuid.uuid4().hex[:6]}"
    live.api.post("/environments", json={"key": name})
    base = f"/environments/{name}/flags"
    # ~500 KiB each: 32 of them pass the 16 MiB frame limit of clients.
    big = ["x" * 250_000, "y" * 250_000]
    written = 0
    while True:
        r = live.api.put(f"{base}/f{written}", json=flag(f"f{written}", variations=big))
        if r.status_code != 201:
            break
        written += 1
    body = problem(r, 422)
    assert "snapshot would be" in body["errors"][0]["message"]
    assert 30 <= written <= 33
    before = redis_dump(live, name)
    # Nothing was stored, segments count too, and the environment still answers.
    big_segment = {"key": "s", "included": [f"user-{i:06d}" for i in range(36_000)]}
    problem(live.api.put(f"/environments/{name}/segments/s", json=big_segment), 422)
    assert redis_dump(live, name) == before
    # Shrinking is always allowed, and frees room for the write that was refused.
    assert live.api.delete(f"{base}/f0").status_code == 200
    again = live.api.put(f"{base}/f{written}", json=flag(f"f{written}", variations=big))
    assert again.status_code == 201, again.text
    # A new client of this environment gets the whole snapshot in one frame.
    from flagwire.core.limits import MAX_SERVER_FRAME

    sdk = live.api.post("/keys", json={"name": "big", "kind": "sdk", "env": name}).json()
    import websockets.sync.client as wsc

    with wsc.connect(
        live.url.replace("http://", "ws://") + STREAM_PATH,
        additional_headers={"Authorization": f"Bearer {sdk['secret']}"},
        max_size=MAX_SERVER_FRAME,
    ) as ws:
        ws.recv(timeout=10)
        snap = ws.recv(timeout=30)
        assert len(snap) <= MAX_SERVER_FRAME
        assert b'"snapshot"' in (snap.encode() if isinstance(snap, str) else snap)[:40]
    live.api.delete(f"/environments/{name}")
