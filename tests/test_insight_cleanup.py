"""The cleanup report and the applications of a flag, through the REST API over real Redis.

"unchanged for N days" is read from each flag's ``updated_at``: the flags here are
written normally, then some are backdated in Redis (the document's ``updated_at``
rewritten), which is what a flag left alone for days looks like to the report.
The applications of a flag are capped (``MAX_APPS_PER_FLAG``) even when two
servers flush new applications at the same moment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette

from flagwire_server.store.insight import MAX_APPS_PER_FLAG, FlagBatch, InsightStore
from flagwire_server.store.keyspace import Keyspace
from tests.support.builders import flag

DAY_S = 86_400


async def _env(http: httpx.AsyncClient, *keys: str) -> str:
    env = f"c{uuid.uuid4().hex[:8]}"
    assert (await http.post("/api/v1/environments", json={"key": env})).status_code == 201
    for key in keys:
        r = await http.put(f"/api/v1/environments/{env}/flags/{key}", json=flag(key))
        assert r.status_code in (200, 201), r.text
    return env


async def _backdate(redis: aioredis.Redis, ks: Keyspace, env: str, key: str, days: float) -> None:
    raw = await redis.hget(ks.docs(env, "flag"), key)
    doc: dict[str, Any] = orjson.loads(raw)
    then = dt.datetime.fromtimestamp(time.time() - days * DAY_S, dt.UTC)
    doc["updated_at"] = then.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await redis.hset(ks.docs(env, "flag"), key, orjson.dumps(doc))


async def test_cleanup_marks_flags_unchanged_for_n_days(
    asgi: tuple[Starlette, httpx.AsyncClient], redis_url: str, redis_prefix: str
) -> None:
    _, http = asgi
    ages = {"fresh": 0.0, "six-days": 6.0, "eight-days": 8.0, "a-month": 30.0}
    env = await _env(http, *ages)
    redis = aioredis.Redis.from_url(redis_url)
    ks = Keyspace(redis_prefix)
    try:
        for key, days in ages.items():
            if days:
                await _backdate(redis, ks, env, key, days)
    finally:
        await redis.aclose()

    async def unchanged(days: int) -> set[str]:
        r = await http.get(f"/api/v1/environments/{env}/cleanup", params={"days": days})
        assert r.status_code == 200, r.text
        return {row["key"] for row in r.json()["flags"] if "unchanged" in row["reasons"]}

    assert await unchanged(7) == {"eight-days", "a-month"}
    assert await unchanged(1) == {"six-days", "eight-days", "a-month"}
    assert await unchanged(29) == {"a-month"}
    assert await unchanged(31) == set()
    # A write makes a flag changed again.
    r = await http.patch(f"/api/v1/environments/{env}/flags/a-month", json={"on": False})
    assert r.status_code == 200, r.text
    assert await unchanged(7) == {"eight-days"}


async def test_a_flags_applications_are_capped_and_the_rest_counted(
    asgi: tuple[Starlette, httpx.AsyncClient], redis_url: str, redis_prefix: str
) -> None:
    _, http = asgi
    env = await _env(http, "busy")
    servers = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [InsightStore(r, Keyspace(redis_prefix), retention_days=30) for r in servers]
    now = int(time.time() * 1000)

    def flush(names: list[str], ms: int) -> dict[str, FlagBatch]:
        return {"busy": FlagBatch(apps=dict.fromkeys(names, ms), last_ms=ms)}

    try:
        # Two servers flush 80 new applications each at the same moment, twice.
        for round_ in range(2):
            await asyncio.gather(
                *(
                    s.write(env, flush([f"{side}{i}" for i in range(80)], now + round_))
                    for side, s in zip("ab", stores, strict=True)
                )
            )
        listed = await stores[0].apps(env, "busy")
        assert len(listed) == MAX_APPS_PER_FLAG
        assert set(listed.values()) == {now + 1}  # listed ones are refreshed
        assert await stores[0].apps_over_cap(env, "busy") == 160 - MAX_APPS_PER_FLAG
        # A listed application stays listed; one more new one is counted, not listed.
        known = sorted(listed)[0]
        await stores[1].write(env, flush([known, "late"], now + 5))
        listed = await stores[0].apps(env, "busy")
        assert listed[known] == now + 5
        assert "late" not in listed
    finally:
        for r in servers:
            await r.aclose()
    r = await http.get(f"/api/v1/environments/{env}/flags/busy/insight")
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["applications"]) == MAX_APPS_PER_FLAG
    assert body["applications"][0] == {"app": known, "last_evaluated": now + 5}
    assert body["applications_over_cap"] == 160 - MAX_APPS_PER_FLAG + 1


async def test_a_key_no_flag_can_have_is_not_found_on_every_flag_route(
    asgi: tuple[Starlette, httpx.AsyncClient],
) -> None:
    """Archive, restore and insight answer such a key as the flag routes do: 404.

    (Schemathesis found the archive route answering an undocumented 422 "invalid
    document" for a key with control characters.)
    """
    _, http = asgi
    env = await _env(http)
    bad = "S%173%16%C2%B5b"  # control characters: no flag can have this key
    for method, path in (
        ("POST", f"/api/v1/environments/{env}/flags/{bad}/archive"),
        ("POST", f"/api/v1/environments/{env}/archived/{bad}/restore"),
        ("GET", f"/api/v1/environments/{env}/flags/{bad}/insight"),
        ("GET", f"/api/v1/environments/{env}/flags/{bad}"),
    ):
        r = await http.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "does not exist" in r.json()["detail"]
