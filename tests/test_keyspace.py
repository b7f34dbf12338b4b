"""Environment data and internal data never share a Redis key, by construction.

The property test covers every name the API accepts against every key family;
the real tests create and delete environments named like internal data while
an API key and an SDK stream are live, and upgrade a store written by v1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable

import orjson
import pytest
import redis
import redis.asyncio as aioredis
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.limits import ENV_RE
from flagwire_server.store.apikeys import KeyRing, hash_secret
from flagwire_server.store.keyspace import Keyspace, glob_escape
from flagwire_server.store.migrate import migrate_v1
from tests.support.builders import flag
from tests.support.server import ServerProcess

#: Names that spell internal data (v1's or today's); each must be a harmless environment.
INTERNAL_NAMES = [
    "keys",
    "sys",
    "envs",
    "store",
    "instances",
    "bootstrap",
    "session",
    "sessions",
    "audit",
    "adminkey",
    "console",
]

env_names = st.from_regex(ENV_RE, fullmatch=True)
samples = st.text(min_size=0, max_size=20)
prefixes = st.text(
    alphabet=st.characters(blacklist_characters="{} ", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Redis ``MATCH`` semantics for the subset we use: ``*``, ``?`` and ``\\`` escapes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@settings(max_examples=400, deadline=None)
@given(prefix=prefixes, env=env_names, other=env_names, sample=samples)
def test_env_keys_never_reach_internal_keys(prefix: str, env: str, other: str, sample: str) -> None:
    ks = Keyspace(prefix)
    internal = set(ks.internal_families(sample)) | {
        ks.internal_families(s)[7] for s in (env, other, "")
    }
    mine = ks.env_families(env, sample)
    assert not internal & set(mine)
    pattern = redis_glob(ks.env_pattern(env))
    # Deleting env matches every key of env ...
    assert all(pattern.match(k) for k in mine)
    # ... and nothing internal, nor any key of another environment.
    assert not [k for k in internal if pattern.match(k)]
    if other != env:
        assert not [k for k in ks.env_families(other, sample) if pattern.match(k)]


@given(text=st.text(max_size=30))
def test_glob_escape_is_literal(text: str) -> None:
    assert redis_glob(glob_escape(text)).match(text)


def test_every_internal_name_is_an_accepted_env_name() -> None:
    # The real test below is only meaningful if the API accepts these names.
    assert all(ENV_RE.match(n) for n in INTERNAL_NAMES)


@pytest.mark.timeout(90)
async def test_deleting_envs_named_like_internal_data_touches_nothing_else(
    server: ServerProcess, redis_url: str
) -> None:
    sdk = server.api("POST", "/keys", {"name": "checkout", "kind": "sdk", "env": "production"})
    admin = server.api("POST", "/keys", {"name": "ops", "kind": "admin"})
    server.api("POST", "/environments/production/flags", flag("checkout"))
    r = redis.Redis.from_url(redis_url)
    prefix = server.prefix
    before_store = r.hgetall(f"{prefix}:store")
    async with websockets.connect(
        server.ws_url, additional_headers={"Authorization": f"Bearer {sdk['secret']}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        assert json.loads(await ws.recv())["type"] == "snapshot"
        for name in INTERNAL_NAMES:
            server.api("POST", "/environments", {"key": name})
            server.api("POST", f"/environments/{name}/flags", flag("f"))
            server.api("DELETE", f"/environments/{name}")
            assert not list(r.scan_iter(match=f"{prefix}:{{{name}}}:*"))
        # The key ring, the store's identity and production are intact ...
        listed = {k["id"] for k in server.api("GET", "/keys")["keys"]}
        assert {sdk["key"]["id"], admin["key"]["id"]} <= listed
        assert server.api("GET", "/environments", key=admin["secret"])["environments"]
        assert r.hgetall(f"{prefix}:store") == before_store
        # ... and the SDK stream is still open and current: a change reaches it.
        server.api("PATCH", "/environments/production/flags/checkout", {"on": False})
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (msg["type"], msg["key"], msg["data"]["on"]) == ("patch", "checkout", False)
    r.close()


def _v1_key(r: redis.Redis, prefix: str, secret: str, kind: str, env: str | None) -> str:
    key_id = f"key_{hashlib.sha256(secret.encode()).hexdigest()[:12]}"
    digest = hash_secret(secret)
    record = {
        "id": key_id,
        "name": f"v1 {kind}",
        "kind": kind,
        "env": env,
        "prefix": secret[:13],
        "created_at": "2026-01-01T00:00:00.000Z",
        "revoked_at": None,
        "hash": digest,
    }
    r.hset(f"{prefix}:{{keys}}:records", key_id, orjson.dumps(record))
    r.hset(f"{prefix}:{{keys}}:byhash", digest, key_id)
    r.incr(f"{prefix}:{{keys}}:version")
    return key_id


async def test_migration_copies_the_v1_key_ring_once(redis_url: str, redis_prefix: str) -> None:
    r = redis.Redis.from_url(redis_url)
    secret = "fw_sdk_" + "a" * 32
    key_id = _v1_key(r, redis_prefix, secret, "sdk", "production")
    r.set(f"{redis_prefix}:sessions:plainsessionid", b'{"key_id":"x","csrf":"y"}')
    r.set(f"{redis_prefix}:console:secret", b"plain")
    client = aioredis.Redis.from_url(redis_url)
    ks = Keyspace(redis_prefix)
    try:
        assert await migrate_v1(client, ks) == {"keyring": 1, "sessions": 2}
        assert await migrate_v1(client, ks) == {"keyring": 0, "sessions": 0}
        ring = KeyRing(client, redis_prefix)
        await ring.refresh()
        rec = ring.authenticate(secret)
        assert rec is not None
        assert rec.id == key_id
        # A revoke after the upgrade is not undone by running the migration again.
        await ring.revoke(key_id)
        await migrate_v1(client, ks)
        await ring.refresh()
        assert ring.authenticate(secret) is None
        assert not r.exists(f"{redis_prefix}:sessions:plainsessionid")
        assert not r.exists(f"{redis_prefix}:console:secret")
    finally:
        for k in r.scan_iter(match=f"{redis_prefix}:*"):
            r.delete(k)
        r.close()
        await client.aclose()


@pytest.mark.timeout(60)
def test_a_v1_store_keeps_working(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    secret = "fw_admin_" + "b" * 32
    _v1_key(r, redis_prefix, secret, "admin", None)
    # A v1 store has its identity and its environments already.
    r.hset(f"{redis_prefix}:store", mapping={"epoch": "v1epoch", "created_at": "2026-01-01"})
    r.hset(
        f"{redis_prefix}:envs",
        "production",
        orjson.dumps({"key": "production", "name": "Production", "created_at": "x"}),
    )
    r.hset(f"{redis_prefix}:{{production}}:meta", mapping={"version": "0", "epoch": "e1"})
    r.close()
    server = make_server(admin_key="")
    status, body = server.request("GET", "/api/v1/keys", key=secret)
    assert status == 200, body
    status, _ = server.request("DELETE", "/api/v1/environments/keys", key=secret)
    assert status == 404
    assert server.request("GET", "/api/v1/keys", key=secret)[0] == 200
