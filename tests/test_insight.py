"""Fleet insight end to end: real clients in two applications, a real server and Redis.

Counts per variation, distinct-context estimates, events per variation, the
applications of a flag, the SDK inventory and the cleanup report, all read
back through the REST API; and summaries that are bad, too big or from an
unidentified stream dropped with a counted reason while the stream lives on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.track import TrackingEventDetails
from websockets.asyncio.client import connect

from flagwire import ClientStatus, FlagClient
from flagwire.core.protocol import Ack, CloseCode, Identify, Summary, decode, encode
from flagwire.core.reports import VariationStats
from flagwire.core.sketch import DENSE_BYTES, register_of
from flagwire.openfeature import FlagwireProvider
from flagwire.sync import SyncFlagClient
from tests.support.builders import flag, prerequisite, rollout
from tests.support.cli import run_cli
from tests.support.inprocess import InProcessServer
from tests.support.polling import poll, poll_blocking
from tests.support.server import _cleanup_prefix

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(redis_url: str, redis_prefix: str, admin_key: str) -> Iterator[InProcessServer]:
    srv = InProcessServer(
        redis_url, prefix=redis_prefix, admin_key=admin_key, env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"}
    ).start()
    try:
        yield srv
    finally:
        srv.stop()
        _cleanup_prefix(redis_url, redis_prefix)


async def _api(server: InProcessServer, method: str, path: str, body: Any = None) -> Any:
    return await asyncio.to_thread(server.api, method, path, body)


async def _env(server: InProcessServer) -> tuple[str, str]:
    env = f"i{uuid.uuid4().hex[:8]}"
    await _api(server, "POST", "/environments", {"key": env})
    key = await _api(server, "POST", "/keys", {"name": "insight", "kind": "sdk", "env": env})
    return env, key["secret"]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_applications_counts_contexts_events_inventory_and_cleanup(
    server: InProcessServer,
) -> None:
    env, sdk = await _env(server)
    flags = [
        flag("checkout", fallthrough=rollout(50, 50)),
        flag("banner"),
        flag("legacy"),
        flag("parent", on=False),
        flag("child", prerequisites=[prerequisite("parent", 0)]),
    ]
    for doc in flags:
        await _api(server, "PUT", f"/environments/{env}/flags/{doc['key']}", doc)
    await _api(server, "PUT", f"/environments/{env}/insight/watched", {"flags": ["checkout"]})

    def client(app: str, instance: str) -> FlagClient:
        return FlagClient(server.url, sdk, app=app, instance=instance, report_interval=0.2)

    web = [client("web", "web-1"), client("web", "web-2")]
    worker = client("worker", "worker-1")
    everyone = [*web, worker]
    for c in everyone:
        assert await c.start() is ClientStatus.READY
    # The watch list reaches each client (after a flush of the server's).
    await poll(lambda: all(c._insight and c._insight.watched == ("checkout",) for c in everyone))

    inventory = await _api(server, "GET", f"/environments/{env}/clients")
    await poll(
        lambda: len(server.api("GET", f"/environments/{env}/clients")["clients"]) == 3,
        what="three SDK instances in the inventory",
    )
    inventory = await _api(server, "GET", f"/environments/{env}/clients")
    rows = {(r["app"], r["instance"]): r for r in inventory["clients"]}
    assert set(rows) == {("web", "web-1"), ("web", "web-2"), ("worker", "worker-1")}
    for row in rows.values():
        assert row["sdk"] == "flagwire-python"
        assert row["applied_version"] == inventory["env_version"]
        assert row["lag"] == 0
        assert row["connected_since"] > 0

    snap = worker.snapshot
    assert snap is not None
    # web-1 sees users 0-99, web-2 100-199, the worker 100-299: 300 distinct in all.
    plan = [(web[0], range(0, 100)), (web[1], range(100, 200)), (worker, range(100, 300))]
    expected: dict[int, int] = {}
    users: dict[int, set[str]] = {}
    events: dict[int, list[float]] = {}
    for start in range(0, 200, 25):  # 25 contexts per client per interval
        for c, keys in plan:
            for i in list(keys)[start : start + 25]:
                ctx = {"key": f"user-{i}"}
                index = snap.evaluate("checkout", ctx, False).variation_index
                assert index is not None
                c.bool_variation("checkout", ctx, False)
                expected[index] = expected.get(index, 0) + 1
                users.setdefault(index, set()).add(ctx["key"])
                if c in web:
                    c.bool_variation("banner", ctx, False)
                    c.track("latency-ms", ctx, 10.0 + index)
                    totals = events.setdefault(index, [0, 0.0])
                    totals[0] += 1
                    totals[1] += 10.0 + index
                else:
                    c.bool_variation("child", ctx, False)
        await asyncio.sleep(0.3)
    for c in everyone:
        await c.close()  # sends what the last interval counted

    async def insight(key: str) -> dict[str, Any]:
        path = f"/environments/{env}/flags/{key}/insight?window=3600&step=60"
        return dict(await _api(server, "GET", path))

    async def all_counted() -> bool:
        got = await insight("checkout")
        return sum(v["evaluations"] for v in got["variations"]) == sum(expected.values())

    await poll(all_counted, within=15, what="every checkout evaluation counted")
    got = await insight("checkout")
    by_index = {v["variation"]: v for v in got["variations"]}
    assert set(by_index) == set(expected) == {0, 1}
    for index, n in expected.items():
        v = by_index[index]
        assert v["evaluations"] == n
        assert sum(v["series"]) == n
        assert v["reasons"] == {"FALLTHROUGH": n}
        assert v["value"] == [True, False][index]
        # Redis's HyperLogLog: 0.81% standard error; small sets are near exact.
        assert abs(v["contexts"] - len(users[index])) <= max(3, 0.03 * len(users[index])), (
            v["contexts"],
            len(users[index]),
        )
        count, total = events[index]
        assert v["events"]["latency-ms"]["count"] == count
        assert v["events"]["latency-ms"]["sum"] == pytest.approx(total)
    assert sum(len(u) for u in users.values()) == 300
    assert {a["app"] for a in got["applications"]} == {"web", "worker"}
    assert got["last_evaluated"] is not None

    banner = await insight("banner")
    assert [v["variation"] for v in banner["variations"]] == [0]
    assert [a["app"] for a in banner["applications"]] == ["web"]
    child = await insight("child")
    assert child["variations"][0]["reasons"] == {"PREREQUISITE_FAILED": 200}

    report = await _api(server, "GET", f"/environments/{env}/cleanup?days=1")
    reasons = {row["key"]: row["reasons"] for row in report["flags"]}
    assert reasons == {
        "banner": ["one_variation"],
        "checkout": [],
        "child": ["one_variation", "blocked"],
        "legacy": ["not_evaluated"],
        "parent": ["not_evaluated"],
    }
    assert {row["key"]: row["blocked_by"] for row in report["flags"]}["child"] == ["parent"]

    metrics = (await asyncio.to_thread(server.request, "GET", "/metrics"))[1]
    for index, n in expected.items():
        got_n = _metric(
            metrics,
            "flagwire_flag_evaluations_total",
            env=env,
            flag="checkout",
            variation=str(index),
        )
        assert got_n == n
    # Streams gone: the inventory empties at the next flush.
    await poll(lambda: server.api("GET", f"/environments/{env}/clients")["clients"] == [])


async def test_busy_clients_count_every_distinct_context_once(server: InProcessServer) -> None:
    """Thousands of distinct contexts per client and interval, overlapping between clients:
    the estimate is of the union, within the sketch's error (0.81% standard error; 3% is
    beyond 3.5 of them).  Summaries once carried at most 32 hashed keys per variation and
    interval, so this flag read about 32 x 3 instead of 4,500."""
    env, sdk = await _env(server)
    await _api(server, "PUT", f"/environments/{env}/flags/busy", flag("busy"))
    clients = [
        FlagClient(server.url, sdk, app="api", instance=f"api-{i}", report_interval=60)
        for i in range(3)
    ]
    for c in clients:
        assert await c.start() is ClientStatus.READY
    # Client 0 sees users 0-2,999, client 1 1,500-4,499, client 2 the same 40 as client 0.
    plan = [range(0, 3_000), range(1_500, 4_500), range(0, 40)]
    for c, users in zip(clients, plan, strict=True):
        for i in users:
            c.bool_variation("busy", {"key": f"user-{i}"}, False)
    for c in clients:
        await c.close()  # one summary each, the whole run in one interval

    async def all_counted() -> bool:
        got = await _api(server, "GET", f"/environments/{env}/flags/busy/insight")
        return sum(v["evaluations"] for v in got["variations"]) == sum(len(u) for u in plan)

    await poll(all_counted, within=15, what="every evaluation counted")
    [v] = (await _api(server, "GET", f"/environments/{env}/flags/busy/insight"))["variations"]
    assert abs(v["contexts"] - 4_500) <= 0.03 * 4_500, v["contexts"]


async def test_bad_summaries_are_dropped_and_counted_and_the_stream_lives_on(
    server: InProcessServer,
) -> None:
    env, sdk = await _env(server)
    other, _ = await _env(server)
    await _api(server, "PUT", f"/environments/{env}/flags/f", flag("f"))
    await _api(server, "PUT", f"/environments/{other}/flags/f", flag("f"))
    headers = {"Authorization": f"Bearer {sdk}"}
    good = Summary(0, 1, {"f": {0: VariationStats({"FALLTHROUGH": 7}, register_of("u"))}})
    async with connect(server.ws_url, additional_headers=headers) as ws:
        hello = decode(await ws.recv())
        await ws.recv()  # snapshot
        await ws.send(encode(good).decode())  # before identify: dropped
        await ws.send(encode(Identify("test", "0")).decode())
        bad = orjson.loads(encode(good))
        bad["flags"]["f"]["0"]["sketch"] = ["user-1@example.com", 1]  # a clear key
        await ws.send(orjson.dumps(bad).decode())
        padded = orjson.loads(encode(good))
        padded["flags"]["f"]["0"]["pad"] = "x" * 300_000
        await ws.send(orjson.dumps(padded).decode())  # over 256 KiB
        invented = Summary(0, 1, {"nope": {0: VariationStats({"FALLTHROUGH": 1})}})
        await ws.send(encode(invented).decode())
        await ws.send(encode(good).decode())
        await ws.send(encode(Ack(hello.version)).decode())  # type: ignore[union-attr]
        # Still open: a change made now reaches this stream.
        await _api(server, "PATCH", f"/environments/{env}/flags/f", {"on": False})
        while True:
            msg = decode(await asyncio.wait_for(ws.recv(), 10))
            if msg.type == "patch":
                break

    async def counted() -> bool:
        text = (await asyncio.to_thread(server.request, "GET", "/metrics"))[1]
        return all(
            _metric(text, "flagwire_insight_summaries_total", result=r) >= 1
            for r in ("unidentified", "invalid", "oversized", "accepted")
        )

    await poll(counted, what="every drop reason counted")

    async def insight(e: str) -> dict[str, Any]:
        return dict(await _api(server, "GET", f"/environments/{e}/flags/f/insight?window=600"))

    await poll(
        lambda: server.api("GET", f"/environments/{env}/flags/f/insight?window=600")["variations"],
        what="the good summary aggregated",
    )
    mine = await insight(env)
    # One good summary of 7 counted (the same before identify was dropped); the
    # invented flag's was accepted but counts nowhere.
    assert [(v["variation"], v["evaluations"]) for v in mine["variations"]] == [(0, 7)]
    assert (await insight(other))["variations"] == []
    status, body = await asyncio.to_thread(
        server.request, "GET", f"/api/v1/environments/{env}/flags/nope/insight"
    )
    assert status == 404, body


async def test_a_non_summary_frame_over_4_kib_still_closes_with_1009(
    server: InProcessServer,
) -> None:
    _, sdk = await _env(server)
    headers = {"Authorization": f"Bearer {sdk}"}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        await ws.recv()
        await ws.send('{"type":"ack","version":0,"pad":"' + "x" * 5000 + '"}')
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == CloseCode.MESSAGE_TOO_BIG


async def test_watched_flags_refuse_what_is_not_a_key(server: InProcessServer) -> None:
    env, _ = await _env(server)
    status, body = await asyncio.to_thread(
        server.request, "PUT", f"/api/v1/environments/{env}/insight/watched", {"flags": ["A B"]}
    )
    assert status == 422, body
    assert "problem" in body or "not flag keys" in body


def _cli(server: InProcessServer, *args: str) -> str:
    return run_cli(server.url, server.admin_key, *args).stdout


async def test_cli_insight_clients_and_stale(server: InProcessServer) -> None:
    env, sdk = await _env(server)
    for doc in (flag("shown"), flag("forgotten")):
        await _api(server, "PUT", f"/environments/{env}/flags/{doc['key']}", doc)
    async with FlagClient(
        server.url, sdk, app="billing", instance="b-1", report_interval=0.2
    ) as client:
        for i in range(5):
            client.bool_variation("shown", {"key": f"u{i}"}, False)
        await poll(
            lambda: server.api("GET", f"/environments/{env}/clients")["clients"],
            what="the client in the inventory",
        )
        listed = await asyncio.to_thread(_cli, server, "clients", "--env", env)
        for word in ("billing", "b-1", "flagwire-python"):
            assert word in listed, listed
    await poll(
        lambda: server.api("GET", f"/environments/{env}/flags/shown/insight")["variations"],
        what="the evaluations counted",
    )
    shown = await asyncio.to_thread(_cli, server, "flags", "insight", "shown", "--env", env)
    lines = shown.splitlines()
    assert lines[0].split()[:4] == ["VARIATION", "VALUE", "EVALS", "CONTEXTS"]
    assert lines[1].split()[:4] == [
        "0",
        "on",
        "5",
        "5",
    ]  # the table shows booleans as on/off, shown
    assert "applications: billing" in shown
    stale = await asyncio.to_thread(_cli, server, "flags", "stale", "--env", env, "--days", "1")
    rows = {line.split()[0]: line for line in stale.splitlines()[1:]}
    assert "not_evaluated" in rows["forgotten"]
    assert "one_variation" in rows["shown"]
    as_json = json.loads(
        await asyncio.to_thread(_cli, server, "flags", "stale", "--env", env, "--json")
    )
    assert {f["key"] for f in as_json["flags"]} == {"shown", "forgotten"}


async def test_openfeature_provider_over_the_sync_client_counts_and_tracks(
    server: InProcessServer,
) -> None:
    env, sdk = await _env(server)
    await _api(server, "PUT", f"/environments/{env}/flags/of", flag("of"))
    await _api(server, "PUT", f"/environments/{env}/insight/watched", {"flags": ["of"]})

    def use() -> None:
        client = SyncFlagClient(server.url, sdk, app="of-app", report_interval=0.2)
        try:
            poll_blocking(lambda: client.client._insight.watched == ("of",), what="watch")
            api.set_provider_and_wait(FlagwireProvider(client))
            of = api.get_client()
            for i in range(6):
                ctx = EvaluationContext(f"u{i}", {"plan": "pro"})
                assert of.get_boolean_value("of", False, ctx) is True
                of.track("checkout", ctx, TrackingEventDetails(value=2.5))
            client.track("refund", {"key": "u0"})  # the sync wrapper's own track
        finally:
            api.shutdown()
            client.close()

    await asyncio.to_thread(use)

    async def got() -> dict[str, Any]:
        return dict(await _api(server, "GET", f"/environments/{env}/flags/of/insight"))

    await poll(lambda: server.api("GET", f"/environments/{env}/flags/of/insight")["variations"])
    await poll(
        lambda: (
            server.api("GET", f"/environments/{env}/flags/of/insight")["variations"][0][
                "evaluations"
            ]
            == 6
        ),
        what="six evaluations through OpenFeature",
    )
    [v] = (await got())["variations"]
    assert v["reasons"] == {"FALLTHROUGH": 6}
    assert v["contexts"] == 6
    assert v["events"] == {
        "checkout": {"count": 6, "sum": 15.0},
        "refund": {"count": 1, "sum": 0.0},
    }
    assert [a["app"] for a in (await got())["applications"]] == ["of-app"]


async def test_summaries_past_the_byte_budget_are_dropped_as_rate(
    server: InProcessServer,
) -> None:
    _, sdk = await _env(server)
    dense = bytes(range(64)) * (DENSE_BYTES // 64)  # one dense sketch, 16,384 characters
    big = Summary(
        0, 1, {f"f{i}": {0: VariationStats({"FALLTHROUGH": 1}, dense)} for i in range(15)}
    )
    frame = encode(big).decode()
    assert 200_000 < len(frame) <= 256 * 1024

    async def rate_drops() -> float:
        text = (await asyncio.to_thread(server.request, "GET", "/metrics"))[1]
        return _metric(text, "flagwire_insight_summaries_total", result="rate")

    before = await rate_drops()
    headers = {"Authorization": f"Bearer {sdk}"}
    async with connect(server.ws_url, additional_headers=headers, max_size=None) as ws:
        await ws.recv()
        await ws.recv()
        await ws.send(encode(Identify("test", "0")).decode())
        for _ in range(24):  # 4 MiB of burst, then 256 KiB/s: the 17th or so is over
            await ws.send(frame)
        await ws.send(encode(Ack(0)).decode())
        await poll(lambda: rate_drops(), what="a summary dropped for rate")
        assert await rate_drops() > before
        assert ws.close_code is None  # still open
