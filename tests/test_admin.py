"""The admin REST API against a real server process and Redis: every route's happy path."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from flagwire.core.limits import STREAM_PATH
from tests.support.builders import flag, segment
from tests.support.polling import poll
from tests.test_admin_support import Live, live_server, redis_dump


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(live: Live) -> str:
    name = f"e{uuid.uuid4().hex[:8]}"
    assert live.api.post("/environments", json={"key": name}).status_code == 201
    return name


def test_environments(live: Live) -> None:
    api = live.api
    name = f"env-{uuid.uuid4().hex[:6]}"
    created = api.post("/environments", json={"key": name, "name": "Staging"})
    assert created.status_code == 201
    body = created.json()
    assert body["key"] == name
    assert body["version"] == 0
    assert len(body["epoch"]) >= 8
    assert name in [e["key"] for e in api.get("/environments").json()["environments"]]
    info = api.get(f"/environments/{name}").json()
    assert info["name"] == "Staging"
    assert "connected" in info
    dup = api.post("/environments", json={"key": name})
    assert dup.status_code == 409
    assert dup.headers["content-type"] == "application/problem+json"
    assert api.delete(f"/environments/{name}").status_code == 204
    assert api.get(f"/environments/{name}").status_code == 404
    assert api.delete(f"/environments/{name}").status_code == 404
    assert not list(live.redis.scan_iter(match=f"{live.prefix}:{{{name}}}:*"))


def test_flag_lifecycle(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/flags"
    r = api.post(base, json=flag("checkout", on=False, tags=["payments"]))
    assert r.status_code == 201
    assert r.headers["etag"] == '"1"'
    out = r.json()
    assert (out["version"], out["env_version"]) == (1, 1)
    assert out["flag"]["updated_by"] == "test admin"
    assert api.post(base, json=flag("checkout")).status_code == 409

    got = api.get(f"{base}/checkout")
    assert got.json()["version"] == 1
    assert got.headers["etag"] == '"1"'

    # PATCH {"on": true} then the kill switch {"on": false}.
    r = api.patch(f"{base}/checkout", json={"on": True})
    assert r.status_code == 200
    assert (r.json()["version"], r.json()["env_version"], r.json()["flag"]["on"]) == (2, 2, True)
    r = api.patch(
        f"{base}/checkout", json={"on": False}, headers={"If-Match": '"2"'}, params={"wait": "0.2"}
    )
    assert r.status_code == 200
    assert r.json()["flag"]["on"] is False
    if "propagation" in r.json():
        assert r.json()["propagation"]["version"] == 3

    # PUT replaces (200) or creates (201); merge-patch content type works too.
    doc = api.get(f"{base}/checkout").json()
    doc["variations"] = ["a", "b"]
    r = api.put(f"{base}/checkout", json=doc)  # carries version 3 = expected version
    assert r.status_code == 200
    assert r.json()["version"] == 4
    r = api.put(f"{base}/other", json=flag("other", tags=["x"]))
    assert r.status_code == 201
    r = api.patch(
        f"{base}/other",
        content=b'{"description": "d"}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200

    lst = api.get(base).json()
    assert [f["key"] for f in lst["flags"]] == ["checkout", "other"]
    assert lst["env_version"] == 6
    assert [f["key"] for f in api.get(base, params={"tag": "payments"}).json()["flags"]] == [
        "checkout"
    ]
    assert [f["key"] for f in api.get(base, params={"q": "OTH"}).json()["flags"]] == ["other"]

    r = api.delete(f"{base}/other")
    assert r.status_code == 200
    assert r.json()["flag"] is None
    assert r.json()["env_version"] == 7
    assert api.get(f"{base}/other").status_code == 404


def test_versions_conflict_and_store_nothing(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/flags"
    api.post(base, json=flag("f"))
    before = redis_dump(live, env)
    r = api.patch(f"{base}/f", json={"on": False}, headers={"If-Match": '"7"'})
    assert r.status_code == 409
    assert r.json()["current_version"] == 1
    r = api.put(f"{base}/f", json={**flag("f"), "version": 5})
    assert r.status_code == 409
    assert r.json()["current_version"] == 1
    r = api.delete(f"{base}/f", headers={"If-Match": '"0"'})
    assert r.status_code == 409
    assert redis_dump(live, env) == before
    assert api.patch(f"{base}/f", json={"on": False, "version": 1}).status_code == 200


def test_segments(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/segments"
    assert api.post(base, json=segment("beta", included=["u1"])).status_code == 201
    r = api.patch(f"{base}/beta", json={"included": ["u1", "u2"]})
    assert r.json()["segment"]["included"] == ["u1", "u2"]
    assert r.json()["version"] == 2
    assert [s["key"] for s in api.get(base).json()["segments"]] == ["beta"]
    hist = api.get(f"{base}/beta/history").json()
    assert [v["version"] for v in hist["versions"]] == [2, 1]
    assert api.post(f"{base}/beta/restore", json={"version": 1}).json()["segment"]["included"] == [
        "u1"
    ]
    assert api.delete(f"{base}/beta").status_code == 200


def test_history_restore_copy(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/flags"
    api.post(base, json=flag("f", on=False))
    api.patch(f"{base}/f", json={"on": True})
    api.patch(f"{base}/f", json={"name": "renamed"})
    hist = api.get(f"{base}/f/history").json()
    assert hist["current_version"] == 3
    assert [v["version"] for v in hist["versions"]] == [3, 2, 1]
    r = api.post(f"{base}/f/restore", json={"version": 1})
    assert r.status_code == 200
    assert (r.json()["version"], r.json()["flag"]["on"], r.json()["flag"]["name"]) == (
        4,
        False,
        "f",
    )
    assert api.post(f"{base}/f/restore", json={"version": 99}).status_code == 404
    # A deleted flag can be restored from its history.
    api.delete(f"{base}/f")
    r = api.post(f"{base}/f/restore", json={"version": 2})
    assert r.status_code == 201
    assert r.json()["version"] == 5  # versions continue from the deleted one (4)

    other = f"o{uuid.uuid4().hex[:8]}"
    api.post("/environments", json={"key": other})
    r = api.post(f"{base}/f/copy", json={"to": other})
    assert r.status_code == 201
    assert r.json()["env_version"] == 1
    assert api.get(f"/environments/{other}/flags/f").json()["on"] is True
    assert api.post(f"{base}/f/copy", json={"to": "nowhere"}).status_code == 404
    api.delete(f"/environments/{other}")


def test_audit_pagination(live: Live, env: str) -> None:
    api = live.api
    for i in range(5):
        api.post(f"/environments/{env}/flags", json=flag(f"f{i}"))
    api.patch(f"/environments/{env}/flags/f4", json={"on": False})
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = api.get(
            f"/environments/{env}/audit",
            params={"limit": 2, **({"before": cursor} if cursor else {})},
        ).json()
        seen += [(e["action"], e["key"]) for e in page["entries"]]
        assert all(e["actor"] == "test admin" for e in page["entries"])
        cursor = page["next"]
        if not cursor:
            break
    assert seen == [("update", "f4")] + [("create", f"f{i}") for i in reversed(range(5))]
    first = api.get(f"/environments/{env}/audit", params={"limit": 1}).json()["entries"][0]
    assert first["before"]["on"] is True
    assert first["after"]["on"] is False


def test_changes_figures(live: Live, env: str) -> None:
    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("f"))
    r = api.get(f"/environments/{env}/changes/1")
    assert r.status_code == 200
    assert r.json()["version"] == 1
    assert r.json()["key"] == "f"
    assert api.get(f"/environments/{env}/changes/2").status_code == 404


def test_keys_and_evaluate(live: Live, env: str) -> None:
    api = live.api
    api.post(
        f"/environments/{env}/flags", json=flag("f", targets=[{"variation": 1, "values": ["bob"]}])
    )
    r = api.post("/keys", json={"name": "svc", "kind": "sdk", "env": env})
    assert r.status_code == 201
    secret, rec = r.json()["secret"], r.json()["key"]
    assert secret.startswith("fw_sdk_")
    assert rec["prefix"] == secret[: len(rec["prefix"])]
    # Only the hash reaches Redis.
    for k in live.redis.scan_iter(match=f"{live.prefix}:*"):
        assert secret.encode() not in repr(_value(live.redis, k)).encode()
    listed = api.get("/keys").json()["keys"]
    assert any(k["id"] == rec["id"] for k in listed)
    assert all("hash" not in k and "secret" not in k for k in listed)

    sdk = httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {secret}"})
    r = sdk.post(f"/environments/{env}/evaluate", json={"context": {"key": "bob"}, "flag": "f"})
    assert r.status_code == 200
    assert (r.json()["value"], r.json()["reason"]) == (False, "TARGET_MATCH")
    r = sdk.post(f"/environments/{env}/evaluate", json={"context": {"key": "amy"}})
    assert r.json()["flags"]["f"]["value"] is True
    assert (
        sdk.post("/environments/production/evaluate", json={"context": {"key": "a"}}).status_code
        == 403
    )
    assert sdk.get("/environments").status_code == 403
    r = api.post(
        f"/environments/{env}/evaluate",
        json={"context": {"key": "x"}, "flag": "nope", "default": 7},
    )
    assert (r.json()["value"], r.json()["error_kind"]) == (7, "FLAG_NOT_FOUND")

    assert api.delete(f"/keys/{rec['id']}").status_code == 200
    assert api.delete(f"/keys/{rec['id']}").status_code == 404
    deadline = time.monotonic() + 2
    while (
        sdk.post(f"/environments/{env}/evaluate", json={"context": {"key": "a"}}).status_code != 401
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    admin = api.post("/keys", json={"name": "ops", "kind": "admin"}).json()
    assert admin["secret"].startswith("fw_admin_")
    other = httpx.Client(base_url=live.base, headers={"Authorization": f"Bearer {admin['secret']}"})
    assert other.get("/environments").status_code == 200
    api.delete(f"/keys/{admin['key']['id']}")
    sdk.close()
    other.close()


def _value(r: redis.Redis, k: Any) -> Any:
    t = r.type(k)
    if t == b"hash":
        return r.hgetall(k)
    if t == b"list":
        return r.lrange(k, 0, -1)
    if t == b"stream":
        return r.xrange(k)
    if t == b"zset":
        return r.zrange(k, 0, -1)
    return r.get(k)


async def test_wait_reports_acknowledgements(live: Live, env: str) -> None:
    """A write with ?wait= answers once the connected client acknowledged it."""
    import asyncio

    import websockets

    from flagwire.core.protocol import Ack, Hello, Patch, decode, encode

    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("kill", on=True))
    secret = api.post("/keys", json={"name": "w", "kind": "sdk", "env": env}).json()["secret"]
    ws_url = live.url.replace("http://", "ws://") + STREAM_PATH
    async with websockets.connect(
        ws_url, additional_headers={"Authorization": f"Bearer {secret}"}
    ) as ws:
        assert isinstance(decode(await ws.recv()), Hello)
        await ws.recv()  # the snapshot

        async def ack_patches() -> Patch:
            while True:
                msg = decode(await ws.recv())
                if isinstance(msg, Patch):
                    await ws.send(encode(Ack(msg.version)).decode())
                    return msg

        acker = asyncio.create_task(ack_patches())
        await poll(  # the connection is counted across instances (~heartbeat)
            lambda: api.get(f"/environments/{env}").json()["connected"] >= 1,
            10,
            "the stream to be counted",
        )
        async with httpx.AsyncClient(base_url=live.base, headers=dict(api.headers)) as client:
            r = await client.patch(
                f"/environments/{env}/flags/kill", json={"on": False}, params={"wait": "5"}
            )
        patch = await acker
    assert r.status_code == 200
    assert patch.data["on"] is False
    assert patch.version == r.json()["env_version"]
    prop = r.json()["propagation"]
    assert prop["version"] == r.json()["env_version"]
    assert (prop["connected"], prop["acknowledged"], prop["complete"]) == (1, 1, True)
    figures = api.get(f"/environments/{env}/changes/{patch.version}").json()
    assert figures["acknowledged"] == 1


def test_evaluate_reads_its_own_writes(live: Live, env: str) -> None:
    # Each evaluation follows the write answered just before it: through the
    # cached snapshot's incremental refresh, a delete, a segment and a re-create.
    api = live.api

    def value(key: str, context: dict[str, Any]) -> Any:
        r = api.post(f"/environments/{env}/evaluate", json={"context": context, "flag": key})
        assert r.status_code == 200, r.text
        return r.json()["value"], r.json()["reason"]

    api.post(f"/environments/{env}/flags", json=flag("g", on=False))
    api.post(f"/environments/{env}/flags", json=flag("h"))
    for i in range(10):
        on = i % 2 == 0
        assert api.patch(f"/environments/{env}/flags/g", json={"on": on}).status_code == 200
        assert value("g", {"key": "u"}) == ((True, "FALLTHROUGH") if on else (False, "OFF"))
    api.put(f"/environments/{env}/segments/staff", json={"key": "staff", "included": ["ann"]})
    api.put(
        f"/environments/{env}/flags/h",
        json=flag(
            "h",
            fallthrough=1,
            rules=[
                {
                    "id": "s",
                    "variation": 0,
                    "clauses": [{"attribute": "key", "op": "segment_match", "values": ["staff"]}],
                }
            ],
        ),
    )
    assert value("h", {"key": "ann"}) == (True, "RULE_MATCH")
    assert value("h", {"key": "bob"}) == (False, "FALLTHROUGH")
    api.delete(f"/environments/{env}/flags/g")
    r = api.post(f"/environments/{env}/evaluate", json={"context": {"key": "u"}, "flag": "g"})
    assert r.json()["error_kind"] == "FLAG_NOT_FOUND"
    api.post(f"/environments/{env}/flags", json=flag("g"))
    assert value("g", {"key": "u"}) == (True, "FALLTHROUGH")


async def test_patch_that_changes_nothing_sends_nothing(live: Live, env: str) -> None:
    api = live.api
    base = f"/environments/{env}/flags"
    api.post(base, json=flag("kill", on=False))
    sdk = api.post("/keys", json={"name": "noop", "kind": "sdk", "env": env}).json()["secret"]
    ws_url = live.url.replace("http://", "ws://") + STREAM_PATH
    async with websockets.connect(
        ws_url, additional_headers={"Authorization": f"Bearer {sdk}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        assert json.loads(await ws.recv())["version"] == 1
        before = redis_dump(live, env)
        for body in ({"on": False}, {"on": False, "tags": []}, {"description": None}):
            r = api.patch(f"{base}/kill", json=body, params={"wait": "1"})
            assert r.status_code == 200, r.text
            out = r.json()
            assert (out["changed"], out["version"], out["env_version"]) == (False, 1, 1)
            assert out["flag"]["on"] is False
            assert "propagation" not in out
        # A stale expected version is still a conflict, not a silent success.
        assert (
            api.patch(f"{base}/kill", json={"on": False}, headers={"If-Match": '"9"'}).status_code
            == 409
        )
        assert redis_dump(live, env) == before  # no version, change-log or audit entry
        r = api.patch(f"{base}/kill", json={"on": True})
        assert (r.json()["changed"], r.json()["version"], r.json()["env_version"]) == (True, 2, 2)
        # The first frame after the no-ops is the real change: none was sent for them.
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (msg["type"], msg["version"], msg["data"]["on"]) == ("patch", 2, True)
