"""Fault scenarios: the server's Redis dies, comes back, or comes back empty.

Every scenario runs a real ``flagwire serve`` on a private Redis
(``RedisProcess``, append-only with fsync always), real FlagClients and raw
protocol subscribers, and ends with :func:`check_invariants` (see
``docs/faults.md``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from flagwire import ClientStatus
from tests.support.builders import flag
from tests.support.faultkit import (
    FAST_ENV,
    Writer,
    fast_client,
    metric_value,
    no_secrets_logged,
    readyz,
)
from tests.support.invariants import (
    Admin,
    RawSubscriber,
    ReadyMonitor,
    RedisView,
    Watched,
    check_invariants,
    poll,
    wait_key_known,
    watch_client,
)
from tests.support.redisproc import RedisProcess
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ENV = "production"


@dataclass
class Rig:
    redis: RedisProcess
    server: ServerProcess
    admin: Admin
    view: RedisView
    sdk: str
    watched: list[Watched] = field(default_factory=list)

    async def clients(self, n_flag: int = 3, n_raw: int = 20) -> None:
        for i in range(n_flag):
            w = watch_client(fast_client(self.server.url, self.sdk), f"client{i}")
            await w.client.start()
            assert w.client.status is ClientStatus.READY, w.client.status_message
            self.watched.append(w)
        raws = [
            RawSubscriber(self.server.ws_url, self.sdk, f"raw{i}", timeout=3).start()
            for i in range(n_raw)
        ]
        for r in raws:
            await asyncio.wait_for(r.first.wait(), 10)
        self.watched.extend(raws)


@pytest.fixture
async def rig(
    private_redis: RedisProcess, make_server: Callable[..., ServerProcess]
) -> AsyncIterator[Rig]:
    server = make_server(redis_url=private_redis.url, env=FAST_ENV)
    admin = Admin(server.url, server.admin_key)
    view = RedisView(private_redis.url, server.prefix)
    for i in range(5):
        w = await admin.put_flag(ENV, flag(f"k{i}", on=True))
        assert w.acked, w
    _id, sdk = await admin.create_key("sdk", ENV)
    await wait_key_known([server.ws_url], sdk)
    rig = Rig(private_redis, server, admin, view, sdk)
    try:
        yield rig
    finally:
        for w in rig.watched:
            await w.close()
        await admin.aclose()
        await view.aclose()


def _values(rig: Rig) -> list[dict[str, Any]]:
    out = []
    for w in rig.watched:
        client = getattr(w, "client", None)
        if client is not None:
            out.append(
                {f"k{i}": client.bool_variation(f"k{i}", {"key": "u"}, None) for i in range(5)}
            )
    return out


async def test_redis_killed_and_restarted_mid_stream(rig: Rig) -> None:
    await rig.clients()
    monitor = ReadyMonitor(rig.view, rig.watched).start()
    writer = Writer(rig.admin).start()
    await poll(lambda: len(writer.acked()) >= 20, 15, "20 acknowledged writes before the kill")
    await writer.stop()  # quiesce: the clients' state before the kill is known
    await poll(
        lambda: all(w.version == writer.acked()[-1].env_version for w in rig.watched),
        10,
        "clients at the last write before the kill",
    )
    before_versions = [w.version for w in rig.watched]
    before_values = _values(rig)

    await asyncio.to_thread(rig.redis.kill)
    killed_at = time.monotonic()
    down = Writer(rig.admin, tag="down", timeout=8.0)
    refused: list[Any] = []
    while time.monotonic() - killed_at < 3.0:
        w = await down.one()
        refused.append(w)
        await asyncio.sleep(0.05)
    status, body = await readyz(rig.server.url)
    # Served from cache while Redis is down: same versions, same answers.
    assert [w.version for w in rig.watched] == before_versions
    assert _values(rig) == before_values
    await asyncio.to_thread(rig.redis.start)

    # Writes fail cleanly while Redis is down: 503 problem+json, promptly, nothing else.
    statuses = sorted({w.status for w in refused})
    assert statuses == [503], f"writes while Redis was down answered {statuses}: " + str(
        [(w.status, w.error, w.seconds) for w in refused if w.status != 503][:3]
    )
    slow = max(w.seconds for w in refused)
    assert slow < 5.0, f"a write took {slow:.1f}s to fail while Redis was down"
    for w in refused[:3]:
        assert w.content_type.startswith("application/problem+json"), w.content_type
        assert isinstance(w.body, dict)
        assert w.body.get("status") == 503
        assert w.body.get("detail")
    assert status == 503, body
    assert any(r.get("reason") == "redis_unreachable" for r in body.get("reasons", [])), body

    # Recovery: ready again, writes succeed, everyone converges.
    await poll(lambda: _is_ready(rig.server.url), 15, "/readyz 200 after Redis came back")
    writer2 = Writer(rig.admin, tag="after", interval=0.01).start()
    await poll(lambda: len(writer2.acked()) >= 20, 15, "20 writes after Redis came back")
    await writer2.stop()
    await check_invariants(rig.view, rig.watched, rig.admin.writes, monitor)

    # Nothing half-written: no refused write left a trace in Redis.
    markers = {w.body["_marker"] for w in refused}
    flags = await rig.view.docs(ENV)
    stored = {d.get("description") for d in flags.values()}
    r, key = rig.view.r, rig.view.key
    logged = b"".join(f[b"m"] for _i, f in await r.xrange(key(ENV, "changes")))
    logged += b"".join(v for _i, f in await r.xrange(key(ENV, "audit")) for v in f.values())
    for i in range(5):  # previous versions of each flag
        logged += b"".join(await r.lrange(key(ENV, f"history:k{i}"), 0, -1))

    def traced(marker: str) -> bool:
        return marker in stored or re.search(marker.encode() + rb"(?![0-9])", logged) is not None

    # The search does look in the right places: older acknowledged writes, overwritten
    # since, are found in the log, audit and history.
    assert all(
        re.search(w.body["_marker"].encode() + rb"(?![0-9])", logged) for w in writer2.acked()[:3]
    )
    leaked = sorted(m for m in markers if traced(m))
    assert not leaked, f"writes refused with 503 left a trace (doc, log, audit): {leaked[:5]}"
    no_secrets_logged([rig.server], [rig.sdk, rig.server.admin_key])


async def _is_ready(url: str) -> bool:
    return (await readyz(url))[0] == 200


async def test_redis_restarted_empty_is_reported_not_streamed(rig: Rig) -> None:
    await rig.clients(n_flag=2, n_raw=5)
    for i in range(5):
        assert (await rig.admin.put_flag(ENV, flag(f"k{i}", on=False))).acked
    top = rig.admin.writes[-1].env_version
    await poll(lambda: all(w.version == top for w in rig.watched), 10, "clients current")
    before = [w.cache() for w in rig.watched]

    await asyncio.to_thread(rig.redis.kill)
    rig.redis.wipe()
    await asyncio.to_thread(rig.redis.start)
    started = time.monotonic()

    # Loudly: /readyz 503 with a reason ...
    async def reset_reported() -> dict[str, Any] | None:
        status, body = await readyz(rig.server.url)
        if status == 503 and any(r.get("reason") == "store_reset" for r in body.get("reasons", [])):
            return body
        return None

    await poll(reset_reported, 10, "/readyz to report store_reset after Redis came back empty")
    # ... an error log line ...
    await poll(
        lambda: any(
            r.get("level") in ("error", "critical") and "reset" in str(r.get("msg", "")).lower()
            for r in rig.server.log_records()
        ),
        5,
        "an error log line about the store reset",
    )
    # ... and a metric.
    value = await metric_value(rig.server.url, "flagwire_store_reset", {"env": ENV})
    assert value == 1.0, f"flagwire_store_reset{{env={ENV!r}}} = {value}"

    # Not an empty world streamed as truth: clients keep their flags and versions.
    await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - started)))
    after = [w.cache() for w in rig.watched]
    assert after == before, "clients were sent the empty store's world"
    assert all(w.version == top for w in rig.watched)
    # A store reset is not a key revocation: clients must not be told to give up for good.
    statuses = {w.name: w.client.status for w in rig.watched if hasattr(w, "client")}
    closes = {
        w.name: [c for c in w.closes if c[1] == 4001]
        for w in rig.watched
        if isinstance(w, RawSubscriber)
    }
    assert ClientStatus.UNAUTHORIZED not in statuses.values(), (
        f"after Redis came back empty the clients were refused as unauthorized: {statuses}"
    )
    assert not any(closes.values()), f"streams closed with 4001 (key revoked): {closes}"
    # A client connecting now is not handed the empty world either: it is refused,
    # or it gets the last known flags.
    late = RawSubscriber(rig.server.ws_url, rig.sdk, "late", timeout=3, reconnect=False).start()
    await poll(lambda: late.events or late.errors or late.closes, 10, "the late client's answer")
    await asyncio.sleep(0.3)
    await late.close()
    got = [e for e in late.events if e.type == "snapshot"]
    assert all(e.held == top and e.flags == frozenset(before[0][0]) for e in got), (
        f"a client connecting after the reset got {[(e.held, sorted(e.flags)) for e in got]}"
    )
