"""``POST /environments/{env}/apply`` over a real server: atomic, versioned, audited, waited on."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flagwire import FlagClient
from tests.support.builders import flag, segment
from tests.test_admin_support import Live, live_server, redis_dump

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


@pytest.fixture
def env(live: Live) -> str:
    name = f"a{uuid.uuid4().hex[:8]}"
    assert live.api.post("/environments", json={"key": name}).status_code == 201
    return name


def written(live: Live, env: str) -> dict[bytes, Any]:
    """What writes leave in an environment (not the fan-out's connection counts)."""
    return {
        k: v for k, v in redis_dump(live, env).items() if not k.endswith((b":conns", b":floors"))
    }


def doc(kind: str, body: dict[str, Any] | None, key: str, version: int | None = None) -> Any:
    out: dict[str, Any] = {"kind": kind, "key": key, "document": body}
    if version is not None:
        out["version"] = version
    return out


def test_apply_is_one_audited_change_per_document(live: Live, env: str) -> None:
    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("old"))
    r = api.post(
        f"/environments/{env}/apply",
        json={
            "name": "commit abc123",
            "documents": [
                doc("flag", flag("new", on=True), "new", 0),
                doc("segment", segment("staff", included=["u1"]), "staff", 0),
                doc("flag", None, "old", 1),
            ],
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["env_version"] == 4
    assert [(c["kind"], c["key"], c["action"]) for c in out["changes"]] == [
        ("segment", "staff", "create"),
        ("flag", "new", "create"),
        ("flag", "old", "delete"),
    ]
    audit = api.get(f"/environments/{env}/audit").json()["entries"]
    assert (audit[0]["action"], audit[0]["key"], audit[0]["actor"]) == (
        "apply",
        "commit abc123",
        "test admin",
    )
    assert len(audit) == 2
    changes = live.redis.xrange(f"{live.prefix}:{{{env}}}:changes")
    assert [c[0] for c in changes] == [b"1-0", b"2-0", b"3-0", b"4-0"]


def test_a_conflict_or_an_invalid_document_leaves_nothing_written(live: Live, env: str) -> None:
    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("b"))
    api.patch(f"/environments/{env}/flags/b", json={"on": False})  # changed by hand: version 2
    before = written(live, env)
    stale = {
        "name": "stale",
        "documents": [doc("flag", flag("a"), "a", 0), doc("flag", flag("b", on=True), "b", 1)],
    }
    r = api.post(f"/environments/{env}/apply", json=stale)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["current_version"] == 2
    assert "'b'" in r.json()["detail"]
    assert written(live, env) == before
    invalid = {
        "name": "invalid",
        "documents": [doc("flag", flag("a"), "a"), doc("flag", flag("c", variations=[]), "c")],
    }
    r = api.post(f"/environments/{env}/apply", json=invalid)
    assert r.status_code == 422
    assert [e["path"] for e in r.json()["errors"]] == ["flag:c.variations"]
    assert written(live, env) == before


def test_bad_bodies_are_problems(live: Live, env: str) -> None:
    api = live.api
    r = api.post(f"/environments/{env}/apply", json={"documents": [{"kind": "x", "key": 3}]})
    assert r.status_code == 422
    paths = {e["path"] for e in r.json()["errors"]}
    assert paths == {"documents[0].kind", "documents[0].key", "documents[0].document"}
    r = api.post(f"/environments/{env}/apply", json={"documents": [], "extra": 1})
    assert r.status_code == 422
    assert r.json()["errors"][0]["path"] == "extra"
    r = api.post("/environments/nowhere/apply", json={"documents": [doc("flag", flag("a"), "a")]})
    assert r.status_code == 404
    r = api.post(f"/environments/{env}/apply", params={"wait": "99"}, json={"documents": []})
    assert r.status_code == 400


async def test_clients_receive_the_apply_and_wait_counts_them(live: Live, env: str) -> None:
    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("kill", on=True))
    secret = api.post("/keys", json={"name": "w", "kind": "sdk", "env": env}).json()["secret"]
    async with FlagClient(live.url, secret) as client:
        assert client.variation("kill", {"key": "u"}, None) is True
        await asyncio.sleep(0.3)  # the connection is counted across instances (~heartbeat)
        async with httpx.AsyncClient(base_url=live.base, headers=dict(api.headers)) as http:
            r = await http.post(
                f"/environments/{env}/apply",
                params={"wait": "5"},
                json={
                    "name": "kill and add",
                    "documents": [
                        doc("flag", flag("kill", on=False), "kill", 1),
                        doc("flag", flag("added", variations=["x", "y"]), "added", 0),
                    ],
                },
            )
        assert r.status_code == 200, r.text
        prop = r.json()["propagation"]
        assert prop["version"] == r.json()["env_version"] == 3
        assert (prop["connected"], prop["acknowledged"], prop["complete"]) == (1, 1, True)
        assert client.version == 3
        assert client.variation("kill", {"key": "u"}, "default") is False
        assert client.variation("added", {"key": "u"}, None) == "x"


def test_an_apply_may_be_larger_than_one_document_body(live: Live, env: str) -> None:
    # Three flags of ~400 KB: over the 512 KiB body limit of single writes, under the apply's.
    big = [f"user-{i:07d}" for i in range(30_000)]
    docs = [
        doc(
            "flag",
            flag(
                f"big{n}",
                targets=[
                    {"variation": 0, "values": big[i : i + 10_000]} for i in (0, 10_000, 20_000)
                ],
            ),
            f"big{n}",
        )
        for n in range(3)
    ]
    body = {"name": "big", "documents": docs}
    assert len(json.dumps(body)) > 1024 * 1024
    r = live.api.post(f"/environments/{env}/apply", json=body)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["changes"]) == 3
    r = live.api.post(
        f"/environments/{env}/apply",
        content=b"{" + b" " * (17 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
