"""Finished scheduled changes and ended plans are deleted after the retention; nothing else is.

Real Redis under the test's prefix, the stores the server uses, and an injected
clock: records that ended 91 days ago go, those that ended 89 days ago stay,
and pending changes and active plans stay whatever their age.
"""

from __future__ import annotations

from typing import Any

import pytest

from flagwire_server.config import Settings
from flagwire_server.release.retention import Retention, ended_ms, expired_plans
from flagwire_server.release.schedule import iso_ms
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.plans import PlanStore
from flagwire_server.store.schedule import ScheduleStore
from tests.support.stores import open_store

DAY = 86_400_000
NOW = 1_800_000_000_000


def _change(cid: str, status: str, ended_days_ago: float, **extra: Any) -> dict[str, Any]:
    at = int(NOW - ended_days_ago * DAY)
    rec = {"id": cid, "flag": "f", "status": status, "due_ms": at - 1000, **extra}
    if status not in ("pending", "cancelled"):
        rec["finished_ms"] = at
    return rec


def _plan(pid: str, status: str, ended_days_ago: float) -> dict[str, Any]:
    at = int(NOW - ended_days_ago * DAY)
    return {
        "id": pid,
        "flag": f"flag-{pid}",
        "status": status,
        "stages": [{"percent": 100}],
        "events": [{"what": "started", "at_ms": at - 5000}, {"what": status, "at_ms": at}],
    }


def test_end_times() -> None:
    assert ended_ms(_change("a", "applied", 1)) == NOW - DAY
    cancelled = _change("c", "cancelled", 0, cancelled_at=iso_ms(NOW - 2 * DAY))
    assert ended_ms(cancelled) == NOW - 2 * DAY  # read from its ISO time
    assert ended_ms(_change("p", "pending", 400)) is None
    assert ended_ms(_plan("r", "running", 400)) is None
    assert expired_plans([_plan("x", "completed", 91), _plan("y", "completed", 89)], NOW, 90) == [
        "x"
    ]


async def test_trim_deletes_only_what_ended_before_the_retention(
    redis_url: str, redis_prefix: str
) -> None:
    async with open_store(redis_url, redis_prefix) as store:
        ks = Keyspace(redis_prefix)
        schedules, plans = ScheduleStore(store.redis, ks), PlanStore(store.redis, ks)
        env = "production"
        for rec in [
            _change("sch_old_applied", "applied", 91),
            _change("sch_old_failed", "failed", 120),
            _change("sch_old_cancelled", "cancelled", 91, cancelled_at=iso_ms(NOW - 91 * DAY)),
            _change("sch_recent", "applied", 89),
            _change("sch_old_pending", "pending", 200),
        ]:
            await schedules.add(env, rec)
        old_plan, recent_plan = _plan("rp_old", "rolled_back", 95), _plan("rp_new", "completed", 3)
        active = _plan("rp_active", "running", 365)
        for p in (old_plan, recent_plan, active):
            await plans.create(env, p)
            await plans.save(env, p, ended=p["status"] != "running")
        await plans.add_reading(env, "rp_old", {"at_ms": 1, "new": 0.1})

        async def envs() -> list[str]:
            return [env]

        retention = Retention(schedules, plans, envs, keep_days=90, clock=lambda: NOW / 1000)
        assert await retention.trim() == {"changes": 3, "plans": 1}
        left = {r["id"] for r in await schedules.list_changes(env)}
        assert left == {"sch_recent", "sch_old_pending"}
        assert {p["id"] for p in await plans.list_plans(env)} == {"rp_new", "rp_active"}
        assert await plans.readings(env, "rp_old") == []
        assert await plans.active_for(env, active["flag"]) == "rp_active"
        # The pending change is still due: the scheduler will still claim it.
        assert await schedules.next_due_ms(env) == active_due(NOW, 200)
        # Trimming again finds nothing.
        assert await retention.trim() == {"changes": 0, "plans": 0}


def active_due(now: int, days_ago: float) -> int:
    return int(now - days_ago * DAY) - 1000


def test_retention_setting() -> None:
    assert Settings.from_env({}).release_retention_days == 90
    assert Settings.from_env({"FLAGWIRE_RELEASE_RETENTION_DAYS": "7"}).release_retention_days == 7
    with pytest.raises(ValueError, match="FLAGWIRE_RELEASE_RETENTION_DAYS"):
        Settings.from_env({"FLAGWIRE_RELEASE_RETENTION_DAYS": "0"})
