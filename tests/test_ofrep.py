"""OFREP against a real server: evaluation, ETags, client-side keys, limits, CORS, events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from flagwire.core.limits import STREAM_PATH
from tests.support.builders import flag, rollout, target
from tests.test_admin_support import start_server, stop_server

pytestmark = pytest.mark.timeout(90)

ORIGIN = "http://127.0.0.1:9"  # allowed by the server below; nothing listens there


@dataclass
class Ofrep:
    url: str
    admin: httpx.Client
    env: str
    sdk: str
    client: str
    client_id: str


def _key(admin: httpx.Client, kind: str, env: str | None) -> dict[str, Any]:
    made = admin.post("/keys", json={"name": f"{kind} key", "kind": kind, "env": env})
    assert made.status_code == 201, made.text
    return dict(made.json())


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Ofrep]:
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    server = start_server(
        redis_url, prefix, FLAGWIRE_ALLOWED_ORIGINS=ORIGIN, FLAGWIRE_HEARTBEAT="2"
    )
    admin = httpx.Client(
        base_url=server.url + "/api/v1",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    try:
        env = f"e{uuid.uuid4().hex[:8]}"
        assert admin.post("/environments", json={"key": env}).status_code == 201
        docs = [
            flag("static-bool", variations=[False, True], fallthrough=1, client_side=True),
            flag("off-flag", on=False, variations=["a", "b"], client_side=True),
            flag(
                "targeted",
                variations=["plain", "vip"],
                targets=[target(1, "alice")],
                client_side=True,
            ),
            flag("split", variations=[1, 2], fallthrough=rollout(50, 50), client_side=True),
            flag("ratio", variations=[0.25, 2.5], fallthrough=1, client_side=True),
            flag("config", variations=[{"color": "red"}, {"color": "blue"}], fallthrough=0),
            flag("server-only", variations=["x", "y"], fallthrough=0),
        ]
        for doc in docs:
            made = admin.post(f"/environments/{env}/flags", json=doc)
            assert made.status_code == 201, made.text
        sdk = _key(admin, "sdk", env)
        client = _key(admin, "client", env)
        yield Ofrep(server.url, admin, env, sdk["secret"], client["secret"], client["key"]["id"])
    finally:
        admin.close()
        stop_server(server)


def _post(live: Ofrep, path: str, key: str, body: Any = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.post(
        live.url + "/ofrep/v1" + path,
        json={"context": {"targetingKey": "bob"}} if body is None else body,
        headers=headers,
        timeout=10,
        **kw,
    )


def test_single_flag_values_reasons_and_variants(live: Ofrep) -> None:
    r = _post(live, "/evaluate/flags/static-bool", live.sdk)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "key": "static-bool",
        "value": True,
        "reason": "STATIC",
        "variant": "1",
        "metadata": {"flagVersion": 1},
    }
    assert _post(live, "/evaluate/flags/off-flag", live.sdk).json()["reason"] == "DISABLED"
    vip = _post(live, "/evaluate/flags/targeted", live.sdk, {"context": {"targetingKey": "alice"}})
    assert (vip.json()["value"], vip.json()["reason"]) == ("vip", "TARGETING_MATCH")
    plain = _post(live, "/evaluate/flags/targeted", live.sdk).json()
    assert (plain["value"], plain["reason"]) == ("plain", "DEFAULT")
    split = _post(live, "/evaluate/flags/split", live.sdk).json()
    assert split["reason"] == "SPLIT"
    assert split["value"] in (1, 2)
    assert _post(live, "/evaluate/flags/ratio", live.sdk).json()["value"] == 2.5
    assert _post(live, "/evaluate/flags/config", live.sdk).json()["value"] == {"color": "red"}


def test_single_flag_errors(live: Ofrep) -> None:
    missing = _post(live, "/evaluate/flags/nope", live.sdk)
    assert missing.status_code == 404
    assert missing.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert missing.json()["key"] == "nope"
    no_key = _post(live, "/evaluate/flags/static-bool", live.sdk, {"context": {"plan": "pro"}})
    assert no_key.status_code == 400
    assert no_key.json()["errorCode"] == "TARGETING_KEY_MISSING"
    bad_key = _post(live, "/evaluate/flags/static-bool", live.sdk, {"context": {"targetingKey": 7}})
    assert (bad_key.status_code, bad_key.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    not_obj = _post(live, "/evaluate/flags/static-bool", live.sdk, {"context": [1]})
    assert (not_obj.status_code, not_obj.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    junk = httpx.post(
        live.url + "/ofrep/v1/evaluate/flags/static-bool",
        content=b"{not json",
        headers={"Authorization": f"Bearer {live.sdk}", "Content-Type": "application/json"},
    )
    assert (junk.status_code, junk.json()["errorCode"]) == (400, "PARSE_ERROR")
    assert junk.headers["content-type"].startswith("application/problem+json")


def test_bulk_etag_and_304_per_context(live: Ofrep) -> None:
    first = _post(live, "/evaluate/flags", live.client)
    assert first.status_code == 200, first.text
    body = first.json()
    keys = [f["key"] for f in body["flags"]]
    # A client-side key sees only client_side flags.
    assert keys == ["off-flag", "ratio", "split", "static-bool", "targeted"]
    assert body["eventStreams"][0]["type"] == "sse"
    etag = first.headers["etag"]
    again = _post(live, "/evaluate/flags", live.client, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    # A change this key cannot see, or one that changes nothing for this context: still 304.
    live.admin.patch(f"/environments/{live.env}/flags/server-only", json={"on": False})
    live.admin.patch(
        f"/environments/{live.env}/flags/targeted", json={"description": "edited"}
    ).raise_for_status()
    still = _post(live, "/evaluate/flags", live.client, headers={"If-None-Match": etag})
    assert still.status_code == 304
    # A change of a value this context gets: 200 and a new tag, read-your-writes.
    live.admin.patch(
        f"/environments/{live.env}/flags/static-bool", json={"fallthrough": {"variation": 0}}
    ).raise_for_status()
    changed = _post(live, "/evaluate/flags", live.client, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    values = {f["key"]: f.get("value") for f in changed.json()["flags"]}
    assert values["static-bool"] is False
    live.admin.patch(
        f"/environments/{live.env}/flags/static-bool", json={"fallthrough": {"variation": 1}}
    ).raise_for_status()


def test_bulk_with_sdk_key_sees_every_flag(live: Ofrep) -> None:
    body = _post(live, "/evaluate/flags", live.sdk).json()
    assert {f["key"] for f in body["flags"]} >= {"config", "server-only", "static-bool"}


def test_client_key_refusals(live: Ofrep) -> None:
    hidden = _post(live, "/evaluate/flags/server-only", live.client)
    assert hidden.status_code == 404
    assert hidden.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert hidden.json() == _post(live, "/evaluate/flags/absent", live.client).json() | {
        "key": "server-only"
    }
    auth = {"Authorization": f"Bearer {live.client}"}
    base = live.url + "/api/v1"
    for method, path in [
        ("GET", f"/environments/{live.env}/flags"),
        ("GET", f"/environments/{live.env}/flags/server-only"),
        ("GET", f"/environments/{live.env}/segments"),
        ("GET", "/environments"),
        ("GET", "/keys"),
    ]:
        r = httpx.request(method, base + path, headers=auth)
        assert r.status_code == 403, (path, r.text)
        assert "client-side key" in r.json()["detail"]
    evaluate = httpx.post(
        f"{base}/environments/{live.env}/evaluate", json={"context": {"key": "a"}}, headers=auth
    )
    assert evaluate.status_code == 403
    ws_url = live.url.replace("http", "ws", 1) + STREAM_PATH

    async def stream() -> int:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(ws_url, additional_headers=auth):
                pass
        return int(info.value.response.status_code)

    assert asyncio.run(stream()) == 403


def test_admin_key_and_missing_key_refused(live: Ofrep) -> None:
    none = httpx.post(live.url + "/ofrep/v1/evaluate/flags", json={})
    assert none.status_code == 401
    assert none.json()["errorCode"] == "GENERAL"
    admin_key = live.admin.headers["authorization"].split()[1]
    admin = _post(live, "/evaluate/flags", admin_key)
    assert admin.status_code == 403
    x_api = httpx.post(
        live.url + "/ofrep/v1/evaluate/flags/static-bool",
        json={"context": {"targetingKey": "a"}},
        headers={"X-API-Key": live.client},
    )
    assert x_api.status_code == 200


def test_context_limits(live: Ofrep) -> None:
    big = _post(live, "/evaluate/flags", live.client, {"context": {"targetingKey": "a" * 40_000}})
    assert big.status_code == 413
    assert "32768" in big.json()["detail"]
    wide = {"targetingKey": "a", **{f"k{i}": i for i in range(300)}}
    many = _post(live, "/evaluate/flags", live.client, {"context": wide})
    assert (many.status_code, many.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    deep: Any = "x"
    for _ in range(20):
        deep = {"d": deep}
    nested = _post(
        live, "/evaluate/flags", live.client, {"context": {"targetingKey": "a", "n": deep}}
    )
    assert (nested.status_code, nested.json()["errorCode"]) == (400, "INVALID_CONTEXT")


def test_configuration_endpoint(live: Ofrep) -> None:
    r = httpx.get(live.url + "/ofrep/v1/configuration", headers={"X-API-Key": live.sdk})
    assert r.status_code == 200
    assert r.json()["name"] == "flagwire"
    assert r.json()["capabilities"]["cacheInvalidation"]["polling"]["enabled"] is True
    again = httpx.get(
        live.url + "/ofrep/v1/configuration",
        headers={"X-API-Key": live.sdk, "If-None-Match": r.headers["etag"]},
    )
    assert again.status_code == 304


def test_cors_on_ofrep_paths_only(live: Ofrep) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,if-none-match",
    }
    ok = httpx.options(live.url + "/ofrep/v1/evaluate/flags", headers=preflight)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        live.url + "/ofrep/v1/evaluate/flags", headers={**preflight, "Origin": "http://evil.test"}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    answer = _post(live, "/evaluate/flags", live.client, headers={"Origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "etag" in answer.headers["access-control-expose-headers"].lower()
    admin = httpx.options(live.url + f"/api/v1/environments/{live.env}/flags", headers=preflight)
    assert "access-control-allow-origin" not in admin.headers


def _events(lines: Iterator[str], deadline: float) -> Iterator[dict[str, Any]]:
    event: dict[str, Any] = {}
    for line in lines:
        if time.monotonic() > deadline:
            return
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":") and ":" in line:
            field, _, value = line.partition(":")
            event[field] = value.strip()


def test_event_stream_notifies_each_change_and_closes_on_revoke(live: Ofrep) -> None:
    key = _key(live.admin, "client", live.env)
    first = _post(live, "/evaluate/flags", key["secret"])
    url = first.json()["eventStreams"][0]["url"]
    assert key["secret"] not in url  # the key itself never goes into a URL
    with httpx.stream("GET", url, timeout=10) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        started = time.monotonic()
        live.admin.patch(
            f"/environments/{live.env}/flags/off-flag", json={"description": f"{started}"}
        ).raise_for_status()
        got = next(_events(lines, time.monotonic() + 5))
        data = json.loads(got["data"])
        assert data["type"] == "refetchEvaluation"
        assert got["id"].endswith(f"-{int(got['id'].rsplit('-', 1)[1])}")
        live.admin.delete(f"/keys/{key['key']['id']}").raise_for_status()
        # The stream of a revoked key ends, and its URL no longer opens one.
        assert list(_events(lines, time.monotonic() + 5)) == []
    assert httpx.get(url, timeout=5).status_code == 401


def test_event_stream_catches_up_from_last_event_id(live: Ofrep) -> None:
    first = _post(live, "/evaluate/flags", live.client)
    url = first.json()["eventStreams"][0]["url"]
    live.admin.patch(
        f"/environments/{live.env}/flags/ratio", json={"description": uuid.uuid4().hex}
    ).raise_for_status()
    # Connecting with the version of an older bulk answer: told to re-fetch at once.
    with httpx.stream("GET", url, timeout=10) as stream:
        got = next(_events(stream.iter_lines(), time.monotonic() + 5))
        assert json.loads(got["data"])["type"] == "refetchEvaluation"
    forged = url.replace("token=", "token=x")
    assert httpx.get(forged, timeout=5).status_code == 401


def test_rate_limit_per_key(redis_url: str) -> None:
    server = start_server(redis_url, f"fwt{uuid.uuid4().hex[:10]}", FLAGWIRE_OFREP_RATE_LIMIT="3")
    try:
        admin = httpx.Client(
            base_url=server.url + "/api/v1",
            headers={"Authorization": f"Bearer {server.admin_key}"},
        )
        admin.post("/environments", json={"key": "rl"}).raise_for_status()
        one, two = _key(admin, "client", "rl")["secret"], _key(admin, "client", "rl")["secret"]
        live = Ofrep(server.url, admin, "rl", one, one, "")
        codes = [_post(live, "/evaluate/flags", one).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200]
        assert codes[3:] == [429, 429]
        limited = _post(live, "/evaluate/flags", one)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["detail"] == "rate limit exceeded for this key"
        assert _post(live, "/evaluate/flags", two).status_code == 200  # per key
        admin.close()
    finally:
        stop_server(server)


def _cli(live: Ofrep, *args: str) -> str:
    admin_key = live.admin.headers["authorization"].split()[1]
    env = {**os.environ, "FLAGWIRE_URL": live.url, "FLAGWIRE_ADMIN_KEY": admin_key}
    flagwire = Path(sys.executable).parent / "flagwire"
    done = subprocess.run(
        [str(flagwire), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_sets_visibility_and_makes_client_keys(live: Ofrep) -> None:
    out = _cli(live, "keys", "create", "web page", "--kind", "client", "--env", live.env)
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("fw_client_")
    assert _post(live, "/evaluate/flags/config", secret).status_code == 404
    _cli(live, "flags", "client-side", "config", "--visible", "-e", live.env)
    assert _post(live, "/evaluate/flags/config", secret).json()["value"] == {"color": "red"}
    assert "client-side" in _cli(live, "flags", "get", "config", "-e", live.env)
    _cli(live, "flags", "client-side", "config", "--hidden", "-e", live.env)
    assert _post(live, "/evaluate/flags/config", secret).status_code == 404


def test_event_streams_count_against_the_stream_caps(redis_url: str) -> None:
    server = start_server(
        redis_url, f"fwt{uuid.uuid4().hex[:10]}", FLAGWIRE_MAX_STREAMS_PER_KEY="2"
    )
    try:
        admin = httpx.Client(
            base_url=server.url + "/api/v1",
            headers={"Authorization": f"Bearer {server.admin_key}"},
        )
        admin.post("/environments", json={"key": "caps"}).raise_for_status()
        secret = _key(admin, "client", "caps")["secret"]
        live = Ofrep(server.url, admin, "caps", secret, secret, "")
        url = _post(live, "/evaluate/flags", secret).json()["eventStreams"][0]["url"]
        with httpx.stream("GET", url, timeout=10) as one, httpx.stream("GET", url, timeout=10):
            assert one.status_code == 200
            third = httpx.get(url, timeout=5)
            assert third.status_code == 429
            assert "2 streams" in third.json()["detail"]
        # Closed streams give their places back.
        deadline = time.monotonic() + 5
        status = 0
        while status != 200 and time.monotonic() < deadline:
            with httpx.stream("GET", url, timeout=10) as again:
                status = again.status_code
            time.sleep(0.1)
        assert status == 200
        admin.close()
    finally:
        stop_server(server)


def test_read_your_writes_across_instances(redis_url: str) -> None:
    prefix = f"fwt{uuid.uuid4().hex[:10]}"
    one = start_server(redis_url, prefix)
    two = start_server(redis_url, prefix, FLAGWIRE_ADMIN_KEY=one.admin_key)
    try:
        admin = httpx.Client(
            base_url=one.url + "/api/v1", headers={"Authorization": f"Bearer {one.admin_key}"}
        )
        admin.post("/environments", json={"key": "ryw"}).raise_for_status()
        admin.post(
            "/environments/ryw/flags", json=flag("f", variations=[0, 1], fallthrough=0)
        ).raise_for_status()
        secret = _key(admin, "sdk", "ryw")["secret"]
        other = Ofrep(two.url, admin, "ryw", secret, secret, "")
        time.sleep(0.5)  # the key ring of the second instance polls every 250 ms
        for i in range(1, 30):
            # Written through one instance, evaluated on the other right after the answer.
            admin.patch("/environments/ryw/flags/f", json={"fallthrough": {"variation": i % 2}})
            got = _post(other, "/evaluate/flags/f", secret).json()
            assert got["value"] == i % 2, (i, got)
        admin.close()
    finally:
        stop_server(two)
        stop_server(one)
