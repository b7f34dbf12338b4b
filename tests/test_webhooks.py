"""Outgoing webhooks end to end: real app, real Redis, a real receiver on a free port.

A flag written through the API reaches the receiver signed, with the document
before and after; a receiver that fails is retried and the delivery log shows
every attempt; a slow one holds a bounded number of deliveries; with two
servers sharing one Redis each change is delivered once, and a server that
stops mid-delivery leaves its events to another.  The admin surface (input
checks, secret, audit, CLI, console) is ``test_webhooks_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from flagwire_server.notify import events
from flagwire_server.notify.notifier import DeliveryPolicy, Notifier
from flagwire_server.notify.signature import SignatureError, verify
from tests.support.builders import flag
from tests.support.inprocess import asgi_app
from tests.support.polling import poll
from tests.support.receiver import Received, receiver
from tests.support.server import _cleanup_prefix
from tests.support.webhooks import BASE, FAST, add_hook, contains, falsy, payloads

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def prefix(redis_url: str, redis_prefix: str) -> Iterator[str]:
    yield redis_prefix
    _cleanup_prefix(redis_url, redis_prefix)


async def test_a_flag_patch_reaches_the_receiver_signed_with_before_and_after(
    redis_url: str, prefix: str
) -> None:
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (_app, http):
        hook_id, secret = await add_hook(http, rec.url, ["flag.changed"])
        assert secret.startswith("whsec_")
        assert len(secret) > 40
        assert (await http.post(f"{BASE}/flags", json=flag("checkout", on=False))).is_success
        r = await http.patch(f"{BASE}/flags/checkout", json={"on": True})
        assert r.status_code == 200, r.text

        def patched() -> list[Received]:
            return [q for q in rec.requests if orjson.loads(q.body)["data"]["action"] == "update"]

        (got,) = await poll(patched, within=10, what="the PATCH's delivery")
        assert got.method == "POST"
        assert got.path == "/hook"
        assert got.headers["content-type"] == "application/json"
        assert got.headers["flagwire-event"] == "flag.changed"
        assert got.headers["flagwire-webhook-id"] == hook_id
        assert got.headers["flagwire-delivery-attempt"] == "1"
        stamp = verify(secret, got.headers["flagwire-signature"], got.body, now=time.time())
        assert abs(stamp - time.time()) < 30
        with pytest.raises(SignatureError):  # one byte changed: no match
            verify(secret, got.headers["flagwire-signature"], got.body + b" ", now=time.time())
        with pytest.raises(SignatureError):  # replayed ten minutes later: refused
            verify(secret, got.headers["flagwire-signature"], got.body, now=time.time() + 600)
        body = orjson.loads(got.body)
        assert body["type"] == "flag.changed"
        assert body["env"] == "production"
        assert body["id"] == got.headers["flagwire-event-id"]
        assert body["id"].startswith("evt_")
        data = body["data"]
        assert (data["kind"], data["key"], data["actor"]) == (
            "flag",
            "checkout",
            "admin (FLAGWIRE_ADMIN_KEY)",
        )
        assert data["before"]["on"] is False
        assert data["after"]["on"] is True
        assert data["after"]["version"] == data["before"]["version"] + 1 == data["flag_version"]

        # The secret was in the creation's answer only.
        one = (await http.get(f"{BASE}/webhooks/{hook_id}")).json()
        listed = (await http.get(f"{BASE}/webhooks")).json()["webhooks"]
        assert one["url"] == rec.url
        assert listed == [one]
        assert secret not in orjson.dumps([one, listed]).decode()
        assert "secret" not in one

        log = (await http.get(f"{BASE}/webhooks/{hook_id}/deliveries")).json()["deliveries"]
        assert {d["outcome"] for d in log} == {"delivered"}
        assert log[0]["status"] == 200


async def test_a_failing_receiver_is_retried_and_the_log_shows_each_attempt(
    redis_url: str, prefix: str
) -> None:
    async with (
        receiver(script=[500]) as rec,
        asgi_app(redis_url, prefix, env=FAST) as (_app, http),
    ):
        hook_id, secret = await add_hook(http, rec.url, ["*"])
        assert (await http.post(f"{BASE}/flags", json=flag("retry-me"))).is_success

        async def two_attempts() -> list[dict[str, Any]] | None:
            r = await http.get(f"{BASE}/webhooks/{hook_id}/deliveries")
            log: list[dict[str, Any]] = r.json()["deliveries"]
            return log if len(log) == 2 else None

        newest, oldest = await poll(two_attempts, within=10, what="two delivery attempts")
        assert (oldest["attempt"], oldest["status"], oldest["outcome"]) == (1, 500, "retrying")
        assert oldest["response"] == "receiver failed on purpose"
        assert (newest["attempt"], newest["status"], newest["outcome"]) == (2, 200, "delivered")
        assert newest["delivery"] == oldest["delivery"]
        assert newest["duration_ms"] >= 0
        first, second = rec.requests
        assert first.body == second.body  # the same event, signed afresh for each attempt
        assert first.headers["flagwire-delivery"] == second.headers["flagwire-delivery"]
        assert second.headers["flagwire-delivery-attempt"] == "2"
        verify(secret, second.headers["flagwire-signature"], second.body, now=time.time())
        metrics = (await http.get("/metrics")).text
        assert 'flagwire_webhook_deliveries_total{env="production",outcome="retrying"} 1.0' in (
            metrics
        )
        assert 'flagwire_webhook_deliveries_total{env="production",outcome="delivered"} 1.0' in (
            metrics
        )


async def test_a_receiver_that_keeps_failing_gets_the_bounded_attempts(
    redis_url: str, prefix: str
) -> None:
    async with (
        receiver(script=[503, 503, 503, 503]) as rec,
        asgi_app(redis_url, prefix, env=FAST) as (app, http),
    ):
        hook_id, _ = await add_hook(http, rec.url, ["flag.changed"])
        assert (await http.post(f"{BASE}/flags", json=flag("doomed"))).is_success
        await poll(lambda: len(rec.requests) >= 3, within=10, what="three attempts")
        hooks = app.state.services.webhooks
        await poll(
            lambda: falsy(hooks.pending("production")), within=10, what="the entry acknowledged"
        )
        log = (await http.get(f"{BASE}/webhooks/{hook_id}/deliveries")).json()["deliveries"]
        assert [(d["attempt"], d["outcome"]) for d in reversed(log)] == [
            (1, "retrying"),
            (2, "retrying"),
            (3, "failed"),
        ]
        assert len(rec.requests) == 3


async def test_retries_stop_when_the_webhook_is_deleted(redis_url: str, prefix: str) -> None:
    env = {**FAST, "FLAGWIRE_WEBHOOK_RETRY_BASE": "1", "FLAGWIRE_WEBHOOK_ATTEMPTS": "5"}
    async with (
        receiver(script=[500] * 5) as rec,
        asgi_app(redis_url, prefix, env=env) as (app, http),
    ):
        hook_id, _ = await add_hook(http, rec.url, ["flag.changed"])
        assert (await http.post(f"{BASE}/flags", json=flag("gone"))).is_success
        await poll(lambda: len(rec.requests) == 1, within=10, what="the first attempt")
        assert (await http.delete(f"{BASE}/webhooks/{hook_id}")).is_success
        hooks = app.state.services.webhooks
        # Acknowledged after the first wait (0.5-1 s), with no second request.
        await poll(lambda: falsy(hooks.pending("production")), within=10, what="acknowledged")
        assert len(rec.requests) == 1


async def test_a_slow_receiver_holds_no_more_than_max_inflight_deliveries(
    redis_url: str, prefix: str
) -> None:
    """Events past the bound wait in Redis, not in the server's memory."""
    env = {**FAST, "FLAGWIRE_WEBHOOK_TIMEOUT": "20"}
    async with receiver(hold=30) as rec, asgi_app(redis_url, prefix, env=env) as (app, http):
        notifier = app.state.services.notifier
        hooks = app.state.services.webhooks
        notifier.max_inflight = 2
        await add_hook(http, rec.url, ["flag.changed"])
        for i in range(8):
            assert (await http.post(f"{BASE}/flags", json=flag(f"slow{i}"))).is_success
        await poll(lambda: len(rec.requests) >= 2, within=10, what="two requests held")
        # Watch the reader for a few of its rounds: it must not take more.
        for _ in range(6):
            assert notifier.inflight <= 2
            assert await hooks.pending("production") <= 2
            assert len(rec.requests) == 2
            await asyncio.sleep(notifier.poll)


async def test_a_new_webhook_gets_only_what_happens_after_it(redis_url: str, prefix: str) -> None:
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (app, http):
        first, _ = await add_hook(http, rec.url, ["flag.changed"])
        assert (await http.post(f"{BASE}/flags", json=flag("seen"))).is_success
        await poll(lambda: len(rec.requests) == 1, within=10, what="the first delivery")
        assert (await http.delete(f"{BASE}/webhooks/{first}")).is_success
        hooks = app.state.services.webhooks
        await poll(
            lambda: falsy(contains(hooks.envs(), "production")),
            within=10,
            what="the environment no longer read",
        )
        for key in ("unseen1", "unseen2"):  # while it has no webhook
            assert (await http.post(f"{BASE}/flags", json=flag(key))).is_success
        await add_hook(http, rec.url, ["flag.changed"])
        assert (await http.post(f"{BASE}/flags", json=flag("seen-again"))).is_success
        await poll(lambda: len(rec.requests) >= 2, within=10, what="the second delivery")
        await poll(lambda: falsy(hooks.pending("production")), within=10, what="acknowledged")
        keys = [orjson.loads(q.body)["data"]["key"] for q in rec.requests]
        assert keys == ["seen", "seen-again"]


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    redis_url: str, prefix: str
) -> None:
    """Names pass at creation (not resolved then); each delivery resolves and checks them."""
    name = socket.gethostname()
    addresses = {i[4][0] for i in socket.getaddrinfo(name, None)}
    if not any(ipaddress.ip_address(a).is_private for a in addresses):
        pytest.skip(f"{name} resolves to no private address here: {addresses}")
    env = {**FAST, "FLAGWIRE_WEBHOOK_ALLOW_PRIVATE": "0"}
    async with receiver() as rec, asgi_app(redis_url, prefix, env=env) as (_app, http):
        url = f"http://{name}:{rec.port}/hook"
        hook_id, _ = await add_hook(http, url, ["flag.changed"])
        assert (await http.post(f"{BASE}/flags", json=flag("private"))).is_success

        async def logged() -> list[dict[str, Any]]:
            r = await http.get(f"{BASE}/webhooks/{hook_id}/deliveries")
            deliveries: list[dict[str, Any]] = r.json()["deliveries"]
            return deliveries

        (attempt,) = await poll(logged, within=10, what="the refused attempt")
        assert attempt["outcome"] == "refused"
        assert attempt["status"] is None
        assert "private address" in attempt["error"]
        assert rec.requests == []


@pytest.fixture
async def two_servers(
    redis_url: str, prefix: str
) -> AsyncIterator[list[tuple[Starlette, httpx.AsyncClient]]]:
    """Two servers (apps with their lifespans and notifiers) sharing one Redis prefix."""
    async with (
        asgi_app(redis_url, prefix, env=FAST) as server_a,
        asgi_app(redis_url, prefix, env=FAST) as server_b,
    ):
        yield [server_a, server_b]


async def test_a_change_through_one_of_two_servers_is_delivered_once(
    two_servers: list[tuple[Starlette, httpx.AsyncClient]],
) -> None:
    (app_a, a), (app_b, b) = two_servers
    assert app_a.state.services.instance_id != app_b.state.services.instance_id
    async with receiver() as rec:
        hook_id, _ = await add_hook(a, rec.url, ["flag.changed"])
        writes = 12
        for i in range(writes):
            r = await a.post(f"{BASE}/flags", json=flag(f"f{i}"))
            assert r.status_code == 201, r.text
        await poll(lambda: len(rec.requests) >= writes, within=15, what=f"{writes} deliveries")
        # Every entry acknowledged: no server holds one that it could still send.
        hooks = app_a.state.services.webhooks
        await poll(lambda: falsy(hooks.pending("production")), within=10, what="all acknowledged")
        ids = Counter(q.headers["flagwire-event-id"] for q in rec.requests)
        assert len(ids) == writes, ids
        assert set(ids.values()) == {1}, ids
        keys = sorted(orjson.loads(q.body)["data"]["key"] for q in rec.requests)
        assert keys == sorted(f"f{i}" for i in range(writes))
        log = (await b.get(f"{BASE}/webhooks/{hook_id}/deliveries")).json()["deliveries"]
        assert len(log) == writes


async def test_an_event_left_by_a_server_that_stopped_is_delivered_by_another(
    redis_url: str, prefix: str
) -> None:
    """Server A reads the event and stops mid-delivery; B claims it and delivers it again."""
    async with receiver(script=[], hold=30) as rec, contextlib.AsyncExitStack() as stack:
        app_a, http_a = await stack.enter_async_context(asgi_app(redis_url, prefix, env=FAST))
        await add_hook(http_a, rec.url, ["flag.changed"])
        assert (await http_a.post(f"{BASE}/flags", json=flag("orphan"))).is_success
        await poll(lambda: len(rec.requests) == 1, within=10, what="A's request")
        await stack.aclose()  # A stops: its delivery is cancelled, the entry stays pending
        rec.hold = 0.0
        async with asgi_app(redis_url, prefix, env=FAST) as (app_b, http_b):
            app_b.state.services.notifier.reclaim_after = 0.5
            hooks = app_b.state.services.webhooks
            await poll(lambda: len(rec.requests) == 2, within=10, what="B's request")
            await poll(lambda: falsy(hooks.pending("production")), within=10, what="acknowledged")
            first, second = rec.requests
            assert first.headers["flagwire-event-id"] == second.headers["flagwire-event-id"]
            assert first.body == second.body
            (hook,) = (await http_b.get(f"{BASE}/webhooks")).json()["webhooks"]
            log = (await http_b.get(f"{BASE}/webhooks/{hook['id']}/deliveries")).json()
            (done,) = log["deliveries"]
            assert done["outcome"] == "delivered"
            assert done["by"] == app_b.state.services.instance_id
            assert done["by"] != app_a.state.services.instance_id


async def test_without_a_blocking_read_each_environment_is_polled(
    redis_url: str, prefix: str
) -> None:
    """The path a Redis Cluster takes: no ``waiter``, one read per environment per poll."""
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (app, http):
        services = app.state.services
        await services.notifier.stop()  # this test's own notifier takes over
        poller = Notifier(
            services.webhooks, owner="poller", policy=DeliveryPolicy(timeout=2), poll=0.05
        )
        poller.start()
        try:
            hook_id, _ = await add_hook(http, rec.url, ["flag.changed"])
            assert (await http.post(f"{BASE}/flags", json=flag("polled"))).is_success
            await poll(lambda: rec.requests, within=10, what="the delivery")
            # The receiver has the request before the poller logs the outcome and acks it.
            hooks = services.webhooks
            await poll(lambda: falsy(hooks.pending("production")), within=10, what="the ack")
            log = (await http.get(f"{BASE}/webhooks/{hook_id}/deliveries")).json()
            assert [d["by"] for d in log["deliveries"]] == ["poller"]
        finally:
            await poller.stop()


async def test_a_scheduled_change_sends_schedule_executed(redis_url: str, prefix: str) -> None:
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (_app, http):
        assert (await http.post(f"{BASE}/flags", json=flag("later", on=False))).is_success
        await add_hook(http, rec.url, ["schedule.executed"])
        r = await http.post(
            f"{BASE}/schedule",
            json={"flag": "later", "change": {"on": True}, "due_at": time.time() + 0.2},
        )
        assert r.status_code == 201, r.text
        (got,) = await poll(
            lambda: payloads(rec.requests, "schedule.executed"), within=10, what="the event"
        )
        change = got["data"]["change"]
        assert (change["id"], change["status"], change["flag"]) == (
            r.json()["id"],
            "applied",
            "later",
        )
        assert not payloads(rec.requests, "flag.changed")  # not subscribed


async def test_release_plan_events_are_sent(redis_url: str, prefix: str) -> None:
    async with receiver() as rec, asgi_app(redis_url, prefix, env=FAST) as (_app, http):
        new_old = flag("plan-me", variations=["new", "old"], fallthrough=1)
        assert (await http.post(f"{BASE}/flags", json=new_old)).is_success
        await add_hook(http, rec.url, ["plan.*"])
        r = await http.post(
            f"{BASE}/releases",
            json={
                "flag": "plan-me",
                "variation": 0,
                "stages": [{"percent": 10, "hold": 3600}, {"percent": 100}],
                "wait": 0,
            },
        )
        assert r.status_code == 201, r.text
        plan_id = r.json()["id"]
        r = await http.post(f"{BASE}/releases/{plan_id}/rollback")
        assert r.status_code == 200, r.text

        def both() -> list[str] | None:
            types = [q.headers["flagwire-event"] for q in rec.requests]
            return types if len(types) >= 2 else None

        types = await poll(both, within=10, what="two plan events")
        assert sorted(types) == ["plan.rolled_back", "plan.started"]
        (rolled,) = payloads(rec.requests, "plan.rolled_back")
        assert rolled["data"]["plan"]["id"] == plan_id
        assert rolled["data"]["plan"]["status"] == "rolled_back"
        assert rolled["data"]["event"]["what"] == "rolled back"
        assert not payloads(rec.requests, "flag.changed")  # not subscribed


async def test_events_still_queued_at_shutdown_are_written_to_redis(
    redis_url: str, prefix: str
) -> None:
    """What the release layer emitted just before a stop is left for another server."""
    async with asgi_app(redis_url, prefix, env=FAST) as (app, http):
        await add_hook(http, "https://example.com/in", ["schedule.executed"])
        services = app.state.services
        notifier = services.notifier
        await notifier.stop()  # the loops end: nothing publishes from now on
        record = {"id": "sch_queued", "status": "applied", "flag": "f"}
        notifier.emit("production", events.schedule_event(record, int(time.time() * 1000)))
        await notifier.stop()  # a server's shutdown: the queue is written first
        stream = services.keyspace.webhook_events("production")
        (entry,) = await services.webhooks.redis.xrange(stream)
        assert orjson.loads(entry[1][b"event"])["data"]["change"]["id"] == "sch_queued"
