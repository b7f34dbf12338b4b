"""A client-event guard stops a release: real ``FlagClient``s on two servers call
``track("error")`` more often for contexts served the new variation; the plan rolls back
by itself and every client serves the old variation within a second of the detection.

The statistics (``release/guards.py``) are tested pure first: the two-proportion
z-test on made-up counts, the minimum sample size, the margin and the direction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flagwire import ClientStatus, FlagClient
from flagwire.core.errors import ValidationError
from flagwire_server.release.guards import Tally, event_reading, parse_guards, t_quantile
from flagwire_server.release.plan import parse_stages
from flagwire_server.release.runner import Releases
from flagwire_server.store.insight import FlagBatch, InsightStore, VariationBatch
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.plans import PlanStore
from tests.support.builders import flag
from tests.support.inprocess import InProcessServer
from tests.support.polling import poll
from tests.support.server import _cleanup_prefix
from tests.support.stores import open_store

pytestmark = pytest.mark.timeout(120)


def _guard(**extra: Any) -> dict[str, Any]:
    [g] = parse_guards([{"event": "error", **extra}])
    return g


def test_event_guard_parsed_with_defaults_and_paths() -> None:
    g = _guard()
    assert g["kind"] == "event"
    assert (g["min_samples"], g["confidence"], g["margin"], g["worse"]) == (1000, 0.99, 0, "higher")
    assert g["action"] == "rollback"
    assert g["name"] == "error rate"
    with pytest.raises(ValidationError) as err:
        parse_guards(
            [
                {"event": "bad event"},
                {"event": "e", "min_samples": 0, "worse": "up"},
                {},
                {"event": "e", "name": "x" * 101},
            ]
        )
    assert {p for p, _ in err.value.errors} == {
        "guards[0].event",
        "guards[1].min_samples",
        "guards[1].worse",
        "guards[2]",
        "guards[3].name",
    }
    # A stage carries guards of its own, checked with the stage's path.
    with pytest.raises(ValidationError) as err:
        parse_stages([{"percent": 10, "guards": [{"event": "e", "confidence": 2}]}])
    assert [p for p, _ in err.value.errors] == ["stages[0].guards[0].confidence"]
    [stage] = parse_stages([{"percent": 100, "guards": [{"event": "error"}]}])
    assert stage["guards"][0]["event"] == "error"


def test_two_proportion_z_test() -> None:
    g = _guard(min_samples=1000)
    # 4.1% vs 0.9% on 2,000 and 3,300 evaluations: far past z = 2.33.
    r = event_reading(g, Tally(2000, 82), Tally(3300, 30))
    assert r.breach == "error rate 4.1% vs 0.9%, n = 5,300 (z = 7.83 > 2.33)"
    assert r.stat is not None
    assert round(r.stat, 2) == 7.83
    # The same rates on fewer evaluations than min_samples: not judged yet.
    r = event_reading(g, Tally(999, 41), Tally(3300, 30))
    assert r.breach is None
    assert r.stat is None
    assert r.new == pytest.approx(41 / 999)
    # A small difference is noise at 99%: 1.1% vs 0.9% on 5,000 each (z ~ 1.0).
    r = event_reading(g, Tally(5000, 55), Tally(5000, 45))
    assert r.breach is None
    assert r.stat is not None
    assert 0.9 < r.stat < 1.1
    # The margin tolerates a known increase: 4.1% vs 0.9% is within 4 points.
    assert event_reading(_guard(margin=0.04), Tally(2000, 82), Tally(3300, 30)).breach is None
    # worse=lower: a rate that falls breaches, one that rises does not.
    lower = _guard(worse="lower", min_samples=100)
    assert event_reading(lower, Tally(2000, 10), Tally(2000, 60)).breach is not None
    assert event_reading(lower, Tally(2000, 60), Tally(2000, 10)).breach is None
    # No events anywhere: nothing to test, no breach.
    assert event_reading(g, Tally(5000, 0), Tally(5000, 0)).breach is None
    # More events than evaluations count as one per evaluation (a proportion).
    r = event_reading(g, Tally(1000, 5000), Tally(1000, 10))
    assert r.new == 1.0
    assert r.breach is not None


def _valued(n: int, mean: float, sd: float) -> Tally:
    """``n`` events whose values have this mean and (sample) standard deviation."""
    return Tally(n, n, n * mean, (n - 1) * sd * sd + n * mean * mean)


def test_welch_t_test_on_means() -> None:
    g = _guard(stat="mean", min_samples=100)
    assert g["name"] == "error mean"
    # 220 vs 200 with sd 50 on 500 each: t = 20 / sqrt(2 * 2500 / 500) = 6.32.
    r = event_reading(g, _valued(500, 220, 50), _valued(500, 200, 50))
    assert r.new == pytest.approx(220)
    assert r.old == pytest.approx(200)
    assert r.breach == "error mean 220 vs 200, n = 1,000 (t = 6.32 > 2.33, Welch)"
    # 203 vs 200 is noise (t = 0.95); a margin of 25 tolerates the 20; lower is not worse.
    assert event_reading(g, _valued(500, 203, 50), _valued(500, 200, 50)).breach is None
    assert (
        event_reading(
            _guard(stat="mean", margin=25, min_samples=100),
            _valued(500, 220, 50),
            _valued(500, 200, 50),
        ).breach
        is None
    )
    assert event_reading(g, _valued(500, 180, 50), _valued(500, 200, 50)).breach is None
    # Unequal variances and sizes: Welch's degrees of freedom, not the pooled ones.
    r = event_reading(g, _valued(100, 230, 120), _valued(2000, 200, 20))
    assert r.stat == pytest.approx(30 / (120**2 / 100 + 20**2 / 2000) ** 0.5)
    assert r.breach is not None
    assert event_reading(g, _valued(99, 300, 1), _valued(500, 200, 1)).stat is None  # < min
    # The t quantile against the table (df 5, 10, 30 at 99%; df 5 at 99.9% within 0.02).
    for p, df, exact in ((0.99, 5, 3.365), (0.99, 10, 2.764), (0.99, 30, 2.457), (0.95, 3, 2.353)):
        assert t_quantile(p, df) == pytest.approx(exact, abs=0.002)
    assert t_quantile(0.999, 5) == pytest.approx(5.893, abs=0.02)
    with pytest.raises(ValidationError) as err:
        parse_guards([{"event": "e", "stat": "median"}])
    assert [p for p, _ in err.value.errors] == ["guards[0].stat"]


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


CONTEXTS = [{"key": f"user-{i}"} for i in range(200)]


async def test_tracked_errors_on_the_new_variation_roll_the_plan_back(
    server: InProcessServer, redis_url: str, redis_prefix: str, admin_key: str
) -> None:
    env = f"g{uuid.uuid4().hex[:8]}"
    base = f"/environments/{env}"
    await _api(server, "POST", "/environments", {"key": env})
    sdk = (await _api(server, "POST", "/keys", {"name": "g", "kind": "sdk", "env": env}))["secret"]
    await _api(
        server,
        "PUT",
        f"{base}/flags/checkout",
        flag("checkout", variations=["new", "old"], fallthrough=1),
    )
    # A second server of the fleet (same Redis): half the clients report to it, and the
    # guard, checked by either, counts them all; the rollback reaches both servers' clients.
    other = await asyncio.to_thread(
        InProcessServer(
            redis_url,
            prefix=redis_prefix,
            admin_key=admin_key,
            env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"},
        ).start
    )
    clients = [
        FlagClient(s.url, sdk, app="shop", report_interval=0.2)
        for s in (server, other, server, other)
    ]
    for c in clients:
        assert await c.start(timeout=10) is ClientStatus.READY

    # Each client notes when it applies a change that serves "old" to every context again.
    back_to_old: dict[int, float] = {}

    def noted(i: int, c: FlagClient) -> None:
        def on_change(_change: object) -> None:
            if all(c.variation("checkout", ctx, None) == "old" for ctx in CONTEXTS):
                back_to_old.setdefault(i, time.time())
            else:
                back_to_old.pop(i, None)

        c.on_change(on_change, "checkout")

    for i, c in enumerate(clients):
        noted(i, c)
    stop = asyncio.Event()
    rounds = 0

    async def application(c: FlagClient) -> None:
        # The new code fails one request in 5, the old one in 50.
        nonlocal rounds
        n = 0
        while not stop.is_set():
            for ctx in CONTEXTS:
                n += 1
                value = c.variation("checkout", ctx, "old")
                if n % (5 if value == "new" else 50) == 0:
                    c.track("error", ctx)
            rounds += 1
            await asyncio.sleep(0.02)

    apps = [asyncio.create_task(application(c)) for c in clients]
    try:
        plan = await _api(
            server,
            "POST",
            f"{base}/releases",
            {
                "flag": "checkout",
                "variation": 0,
                "stages": [
                    {
                        "percent": 50,
                        "hold": 3600,
                        "guards": [{"event": "error", "min_samples": 300, "name": "errors"}],
                    },
                    {"percent": 100},
                ],
            },
        )
        pid = plan["id"]
        # The guard's flag is watched while it runs (the plan added it: it was not before).
        assert plan["watch_added"] is True

        async def rolled_back() -> dict[str, Any] | None:
            p = await _api(server, "GET", f"{base}/releases/{pid}")
            return p if p["status"] == "rolled_back" else None

        done = await poll(rolled_back, within=30, what="the event guard to roll the plan back")
        event = done["events"][-1]
        detected_ms = event["detected_ms"]

        async def all_back() -> bool:
            return len(back_to_old) == len(clients)

        await poll(all_back, within=5, what="every client to serve old again")
    finally:
        stop.set()
        await asyncio.gather(*apps)
        for c in clients:
            await c.close()
        await asyncio.to_thread(other.stop)
    assert done["reason"].startswith("guard breached: error rate ")
    assert event["what"] == "rolled back"
    assert event["by"] == "guard"
    assert (
        event["summary"]
        == f"applied by {len(clients)} of {len(clients)} in {event['propagation']['max_ms']} ms"
    )
    # Every client serves old again within a second of the detection.
    applied_ms = sorted((t * 1000 - detected_ms) for t in back_to_old.values())
    assert applied_ms[-1] < 1000, applied_ms
    # The readings the console charts: rates of both variations, the sample, z.
    readings = (await _api(server, "GET", f"{base}/releases/{pid}/readings"))["readings"]
    assert readings
    # (Both servers may see the breach; the one that took the plan's lock rolled back.)
    why = done["reason"].removeprefix("guard breached: ")
    matching = [r for r in readings if r.get("breach") == why]
    assert matching, readings[-3:]
    last = matching[-1]
    assert last["new"] > last["old"]
    assert last["n"] >= 600
    assert last["z"] > 2.33
    # The plan ended: its flag is no longer watched (it was not before the plan).
    assert (await _api(server, "GET", f"{base}/insight/watched"))["flags"] == []


async def test_a_slower_new_variation_pauses_the_plan_by_welchs_t_test(
    server: InProcessServer,
) -> None:
    env = f"m{uuid.uuid4().hex[:8]}"
    base = f"/environments/{env}"
    await _api(server, "POST", "/environments", {"key": env})
    sdk = (await _api(server, "POST", "/keys", {"name": "m", "kind": "sdk", "env": env}))["secret"]
    await _api(
        server,
        "PUT",
        f"{base}/flags/search",
        flag("search", variations=["new", "old"], fallthrough=1),
    )
    clients = [FlagClient(server.url, sdk, app="shop", report_interval=0.2) for _ in range(2)]
    for c in clients:
        assert await c.start(timeout=10) is ClientStatus.READY
    stop = asyncio.Event()

    async def application(c: FlagClient) -> None:
        # The new code answers in 260 ms on average, the old one in 200 (both +-40).
        n = 0
        while not stop.is_set():
            for ctx in CONTEXTS:
                n += 1
                value = c.variation("search", ctx, "old")
                jitter = (n * 7919 % 81) - 40
                c.track("latency-ms", ctx, (260 if value == "new" else 200) + jitter)
            await asyncio.sleep(0.02)

    apps = [asyncio.create_task(application(c)) for c in clients]
    try:
        plan = await _api(
            server,
            "POST",
            f"{base}/releases",
            {
                "flag": "search",
                "variation": 0,
                "guards": [
                    {
                        "event": "latency-ms",
                        "stat": "mean",
                        "min_samples": 300,
                        "action": "pause",
                        "name": "latency",
                    }
                ],
                "stages": [{"percent": 30, "hold": 3600}, {"percent": 100}],
            },
        )
        pid = plan["id"]

        async def paused() -> dict[str, Any] | None:
            p = await _api(server, "GET", f"{base}/releases/{pid}")
            return p if p["status"] == "paused" else None

        done = await poll(paused, within=30, what="the mean guard to pause the plan")
    finally:
        stop.set()
        await asyncio.gather(*apps)
        for c in clients:
            await c.close()
    assert done["reason"].startswith("guard breached: latency-ms mean 2")
    assert "Welch" in done["reason"]
    event = done["events"][-1]
    assert event["what"] == "paused by a guard"
    assert event["detected_ms"] <= event["at_ms"]
    readings = (await _api(server, "GET", f"{base}/releases/{pid}/readings"))["readings"]
    last = readings[-1]
    assert 240 < last["new"] < 280
    assert 180 < last["old"] < 220
    assert last["t"] > 2.33
    # Paused, not rolled back: the flag still serves the stage (30% new).
    doc = await _api(server, "GET", f"{base}/flags/search")
    assert doc["fallthrough"]["rollout"]["variations"][0] == {"variation": 0, "weight": 30000}


async def test_one_reading_per_period_for_the_whole_fleet(
    redis_url: str, redis_prefix: str
) -> None:
    """Every server checks every plan's guards; only the first in each period keeps a reading."""
    async with open_store(redis_url, redis_prefix) as store:
        ks = Keyspace(redis_prefix)
        a, b = PlanStore(store.redis, ks), PlanStore(store.redis, ks)  # two servers
        assert await a.reading_due("production", "rp_1", 300) is True
        assert await b.reading_due("production", "rp_1", 300) is False
        assert await b.reading_due("production", "rp_2", 300) is True  # per plan

        async def due_again() -> bool:
            return await b.reading_due("production", "rp_1", 300)

        await poll(due_again, within=5, what="the next period")


async def test_resume_after_a_guard_pause_counts_from_the_resume(
    redis_url: str, redis_prefix: str
) -> None:
    """A person resumes a plan a guard paused: the guard judges only what happens after,
    and the pause does not count as hold.  Counts are written with the insight store
    (as servers' flushes do); the plan's loop is driven by ``tick`` and a fake clock."""
    async with open_store(redis_url, redis_prefix) as store:
        env = "production"
        ks = Keyspace(redis_prefix)
        insight = InsightStore(store.redis, ks, retention_days=1)
        now = [time.time()]
        releases = Releases(
            store, PlanStore(store.redis, ks), owner="t", insight=insight, clock=lambda: now[0]
        )
        await store.put(
            env, "flag", flag("f", variations=["new", "old"], fallthrough=1), actor="a", create=True
        )

        async def traffic(new: tuple[int, int], old: tuple[int, int]) -> None:
            batch = FlagBatch(last_ms=int(now[0] * 1000))
            for index, (n, errors) in ((0, new), (1, old)):
                vb = batch.variations[index] = VariationBatch()
                vb.reasons["FALLTHROUGH"] = n
                vb.events["error"] = [errors, 0.0, 0.0]
            await insight.write(env, {"f": batch})

        await traffic((5000, 900), (5000, 10))  # before the plan: not counted
        plan = await releases.start(
            env,
            {
                "flag": "f",
                "variation": 0,
                "stages": [{"percent": 50, "hold": 60}, {"percent": 100}],
                "guards": [{"event": "error", "min_samples": 500, "action": "pause"}],
            },
            actor="alice",
        )
        assert plan["watch_added"] is True
        assert await insight.watched(env) == ["f"]
        assert await releases.tick() == []  # nothing since the start
        await traffic((1000, 50), (1000, 10))  # 5% vs 1%
        [paused] = await releases.tick()
        assert paused["status"] == "paused"
        assert paused["reason"] == (
            "guard breached: error rate 5.0% vs 1.0%, n = 2,000 (z = 5.24 > 2.33)"
        )
        now[0] += 600  # ten minutes paused: not hold
        resumed = await releases.operate(env, plan["id"], "resume", actor="alice")
        assert resumed["status"] == "running"
        assert await releases.tick() == []  # what the guard saw before is accepted
        await traffic((1000, 10), (1000, 10))  # fine since the resume
        assert await releases.tick() == []
        now[0] += 30
        assert await releases.tick() == []  # 30 s of the 60 s hold, not 630
        await traffic((1000, 60), (1000, 10))  # worse again: new evidence
        [again] = await releases.tick()
        assert again["status"] == "paused"
        assert "n = 4,000" in again["reason"]  # counted from the resume
        ended = await releases.operate(env, plan["id"], "rollback", actor="alice")
        assert ended["status"] == "rolled_back"
        assert await insight.watched(env) == []  # the plan watched it, so it unwatches it
        await releases.stop()
