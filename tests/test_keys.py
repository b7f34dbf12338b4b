"""API keys: hashes only in Redis, in-memory checks, revocation seen by every instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire_server.store.apikeys import KeyRing, hash_secret


@pytest.fixture
async def client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    async for k in c.scan_iter(match=f"{redis_prefix}:*"):
        await c.delete(k)
    await c.aclose()


async def test_create_authenticate_and_hash_only(client: aioredis.Redis, redis_prefix: str) -> None:
    ring = KeyRing(client, redis_prefix)
    rec, secret = await ring.create("checkout service", "sdk", "production")
    assert secret.startswith("fw_sdk_")
    assert len(secret) == len("fw_sdk_") + 32
    assert rec.prefix == secret[:11]
    assert rec.env == "production"
    assert ring.authenticate(secret) == rec
    assert ring.authenticate(secret + "x") is None
    assert ring.authenticate("") is None
    admin, admin_secret = await ring.create("ops", "admin")
    assert admin_secret.startswith("fw_admin_")
    assert admin.env is None
    # The secret is nowhere in Redis; its hash is.
    blob = b""
    async for k in client.scan_iter(match=f"{redis_prefix}:*"):
        t = await client.type(k)
        blob += k + repr(await client.hgetall(k) if t == b"hash" else await client.get(k)).encode()
    assert secret.encode() not in blob
    assert admin_secret.encode() not in blob
    assert hash_secret(secret).encode() in blob
    listed = await ring.list_keys()
    assert {r.id for r in listed} == {rec.id, admin.id}
    assert all("hash" not in r.to_json() for r in listed)


async def test_env_admin_key(client: aioredis.Redis, redis_prefix: str) -> None:
    ring = KeyRing(client, redis_prefix, admin_key="s3cret-admin")
    rec = ring.authenticate("s3cret-admin")
    assert rec is not None
    assert rec.kind == "admin"
    assert ring.authenticate("s3cret-admi") is None


async def test_validation(client: aioredis.Redis, redis_prefix: str) -> None:
    ring = KeyRing(client, redis_prefix)
    with pytest.raises(ValidationError) as exc:
        await ring.create("", "root", None)
    assert {p for p, _ in exc.value.errors} == {"name", "kind"}
    with pytest.raises(ValidationError):
        await ring.create("x", "sdk", None)


async def test_revoke_reaches_other_instances(client: aioredis.Redis, redis_prefix: str) -> None:
    a = KeyRing(client, redis_prefix, poll_interval=0.05)
    b = KeyRing(client, redis_prefix, poll_interval=0.05)
    await a.start()
    await b.start()
    try:
        rec, secret = await a.create("svc", "sdk", "production")
        for _ in range(40):  # b learns of the new key by polling
            if b.authenticate(secret):
                break
            await asyncio.sleep(0.025)
        assert b.authenticate(secret) == rec
        seen_a: list[str] = []
        seen_b: list[str] = []
        a.on_revoke(seen_a.append)

        async def on_b(key_id: str) -> None:
            seen_b.append(key_id)

        b.on_revoke(on_b)
        assert (await a.revoke(rec.id)) is not None
        assert await a.revoke(rec.id) is None
        assert a.authenticate(secret) is None
        for _ in range(40):
            if seen_b:
                break
            await asyncio.sleep(0.025)
        assert seen_a == [rec.id]
        assert seen_b == [rec.id]
        assert b.authenticate(secret) is None
        await asyncio.sleep(0.2)
        assert seen_b == [rec.id]  # fired once
    finally:
        await a.stop()
        await b.stop()
