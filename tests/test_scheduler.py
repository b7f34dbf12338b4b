"""The scheduler over a real Redis with an injected clock: claims, rules, takeovers, grace.

Each test steps a fake clock through due times and leases, so the rules are
checked in milliseconds of wall time; the real-time paths (the loop, the API,
three processes) are in ``test_schedule_api.py`` and ``test_schedule_fleet.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from flagwire_server.release.schedule import parse_request, scheduler_actor
from flagwire_server.release.scheduler import Scheduler
from flagwire_server.store.documents import Store
from flagwire_server.store.schedule import ScheduleStore
from tests.support.builders import flag
from tests.support.server import _cleanup_prefix

T0 = 1_900_000_000.0
ENV = "production"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def parts(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[Store, ScheduleStore, Clock]]:
    redis = aioredis.from_url(redis_url)
    store = Store(redis, redis_prefix)
    await store.create_env(ENV)
    await store.put(ENV, "flag", flag("f", on=True), actor="alice", create=True)
    try:
        yield store, ScheduleStore(redis, store.keyspace), Clock()
    finally:
        await redis.aclose()
        _cleanup_prefix(redis_url, redis_prefix)


def _runner(parts: tuple[Store, ScheduleStore, Clock], owner: str = "a", **kw: Any) -> Scheduler:
    store, schedules, clock = parts
    kw.setdefault("grace", 60)
    kw.setdefault("lease", 5)
    return Scheduler(store, schedules, owner=owner, clock=clock, **kw)


async def _schedule(
    parts: tuple[Store, ScheduleStore, Clock], at: float, **body: Any
) -> dict[str, Any]:
    store, schedules, clock = parts
    body.setdefault("flag", "f")
    body.setdefault("change", {"on": False})
    fields = parse_request({**body, "due_at": at}, now_ms=int(clock() * 1000))
    doc = await store.get_doc(ENV, "flag", fields["flag"])
    record = {
        "id": schedules.new_id(),
        **fields,
        "base_version": doc["version"],
        "status": "pending",
        "created_by": "alice",
    }
    await schedules.add(ENV, record)
    return record


async def test_nothing_runs_before_its_time_then_it_runs_once(parts: Any) -> None:
    store, schedules, clock = parts
    rec = await _schedule(parts, T0 + 10)
    runner = _runner(parts)
    assert await runner.tick() == []
    clock.now = T0 + 10.004
    [done] = await runner.tick()
    assert done["status"] == "applied"
    assert done["lateness_ms"] == 4
    doc = await store.get_doc(ENV, "flag", "f")
    assert doc["on"] is False
    assert doc["version"] == 2
    assert doc["updated_by"] == scheduler_actor(rec)
    assert await runner.tick() == []
    assert (await schedules.get(ENV, rec["id"]))["status"] == "applied"
    # The audit log names the scheduler and who scheduled it.
    entries, _ = await store.audit(ENV)
    assert entries[0].actor == "scheduler, created by alice " + f"({rec['id']})"


async def test_two_servers_claim_each_change_once(parts: Any) -> None:
    store, _schedules, clock = parts
    for i in range(6):
        await store.put(ENV, "flag", flag(f"g{i}"), actor="alice", create=True)
        await _schedule(parts, T0 + 1, flag=f"g{i}")
    a, b = _runner(parts, "a"), _runner(parts, "b")
    clock.now = T0 + 1
    done_a, done_b = await asyncio.gather(a.tick(), b.tick())
    ids = [r["id"] for r in done_a + done_b]
    assert len(ids) == 6
    assert len(set(ids)) == 6
    for i in range(6):
        assert (await store.get_doc(ENV, "flag", f"g{i}"))["version"] == 2


@pytest.mark.parametrize(
    ("rule", "status", "on"),
    [("apply", "applied", False), ("skip", "skipped", True), ("fail", "failed", True)],
)
async def test_flag_edited_since_scheduled(parts: Any, rule: str, status: str, on: bool) -> None:
    store, _schedules, clock = parts
    await _schedule(parts, T0 + 1, if_changed=rule)
    await store.patch(ENV, "flag", "f", {"name": "edited"}, actor="bob")
    clock.now = T0 + 1
    [done] = await _runner(parts).tick()
    assert done["status"] == status
    doc = await store.get_doc(ENV, "flag", "f")
    assert doc["on"] is on
    assert doc["name"] == "edited"
    if status != "applied":
        assert "version 1, now at version 2" in done["reason"]


async def test_missed_past_grace_runs_within_it(parts: Any) -> None:
    store, _schedules, clock = parts
    late = await _schedule(parts, T0 + 1)
    await store.put(ENV, "flag", flag("h"), actor="alice", create=True)
    in_time = await _schedule(parts, T0 + 50, flag="h")
    # Every server was down from before T0+1 until T0+100: a fresh start with grace 60 s.
    clock.now = T0 + 100
    done = {r["id"]: r for r in await _runner(parts, grace=60).tick()}
    assert done[late["id"]]["status"] == "missed"
    assert "grace period of 60 s" in done[late["id"]]["reason"]
    assert done[in_time["id"]]["status"] == "applied"
    assert done[in_time["id"]]["lateness_ms"] == 50_000
    assert (await store.get_doc(ENV, "flag", "f"))["on"] is True
    assert (await store.get_doc(ENV, "flag", "h"))["on"] is False


async def test_takeover_after_a_crash_between_write_and_record(parts: Any) -> None:
    """Server a claims and writes, then dies before recording: b must not write again."""
    store, schedules, clock = parts
    rec = await _schedule(parts, T0 + 1, change={"fallthrough": {"variation": 1}})
    a, b = _runner(parts, "a", lease=5), _runner(parts, "b", lease=5)
    clock.now = T0 + 1
    assert await schedules.claim(ENV, owner="a", now_ms=a.now_ms(), lease_ms=5000) == [rec["id"]]
    await a._write(ENV, rec, expected=1)  # the write, and then a "crash"
    assert await b.tick() == []  # a's lease still holds
    clock.now = T0 + 6.5
    [done] = await b.tick()
    assert done["status"] == "applied"
    assert done["executed_by"] == "b"
    assert "after a takeover" in done["reason"]
    doc = await store.get_doc(ENV, "flag", "f")
    assert doc["version"] == 2  # written once
    # a wakes up: its lease is gone, so it cannot overwrite b's record.
    assert not await schedules.finish(ENV, {**rec, "status": "failed"}, owner="a")
    assert (await schedules.get(ENV, rec["id"]))["status"] == "applied"


async def test_stalled_server_cannot_write_after_takeover(parts: Any) -> None:
    store, schedules, clock = parts
    rec = await _schedule(parts, T0 + 1)
    a, b = _runner(parts, "a", lease=5), _runner(parts, "b", lease=5)
    clock.now = T0 + 1
    await schedules.claim(ENV, owner="a", now_ms=a.now_ms(), lease_ms=5000)
    clock.now = T0 + 7  # a stalled past its lease; b takes over and writes
    [done] = await b.tick()
    assert done["status"] == "applied"
    # a resumes its execution: it finds b's write and records nothing more.
    assert await a.execute(ENV, rec["id"]) is None
    assert (await store.get_doc(ENV, "flag", "f"))["version"] == 2


async def test_rollout_restore_and_replace(parts: Any) -> None:
    store, _schedules, clock = parts
    await store.patch(ENV, "flag", "f", {"name": "two"}, actor="alice")  # version 2
    ro = {
        "rollout": {
            "variations": [{"variation": 0, "weight": 10000}, {"variation": 1, "weight": 90000}]
        }
    }
    await _schedule(parts, T0 + 1, action="rollout", change=ro)
    clock.now = T0 + 1
    [done] = await _runner(parts).tick()
    assert done["status"] == "applied", done["reason"]
    assert (await store.get_doc(ENV, "flag", "f"))["fallthrough"]["rollout"]["variations"] == (
        ro["rollout"]["variations"]
    )
    await _schedule(parts, T0 + 2, action="restore", change=None, version=1)
    clock.now = T0 + 2
    [done] = await _runner(parts).tick()
    doc = await store.get_doc(ENV, "flag", "f")
    assert done["status"] == "applied"
    assert doc["fallthrough"] == {"variation": 0}
    assert doc.get("name", "") != "two"
    await _schedule(parts, T0 + 3, action="replace", change=flag("f", on=False, name="new"))
    clock.now = T0 + 3
    [done] = await _runner(parts).tick()
    doc = await store.get_doc(ENV, "flag", "f")
    assert done["status"] == "applied"
    assert doc["name"] == "new"
    assert doc["on"] is False


async def test_invalid_by_execution_time_fails_with_reason(parts: Any) -> None:
    store, _schedules, clock = parts
    await _schedule(parts, T0 + 1, change={"fallthrough": {"variation": 1}}, if_changed="apply")
    await store.patch(ENV, "flag", "f", {"variations": [True], "off_variation": 0}, actor="bob")
    clock.now = T0 + 1
    [done] = await _runner(parts).tick()
    assert done["status"] == "failed"
    assert done["reason"].startswith("invalid: ")
    assert (await store.get_doc(ENV, "flag", "f"))["fallthrough"] == {"variation": 0}


async def test_edit_and_cancel_refused_once_running_or_final(parts: Any) -> None:
    from flagwire_server.store.documents import Conflict

    _store, schedules, clock = parts
    rec = await _schedule(parts, T0 + 1)
    now = int(clock() * 1000)
    await schedules.update(ENV, {**rec, "due_ms": now + 5000}, now_ms=now)
    assert await schedules.next_due_ms(ENV) == now + 5000
    clock.now = T0 + 5
    await schedules.claim(ENV, owner="a", now_ms=now + 5000, lease_ms=5000)
    with pytest.raises(Conflict, match="being executed"):
        await schedules.update(ENV, rec, now_ms=now + 5000, cancel=True)
    assert (await schedules.get(ENV, rec["id"], now_ms=now + 5000))["status"] == "running"
    other = await _schedule(parts, T0 + 100)
    await schedules.update(ENV, {**other, "status": "cancelled"}, now_ms=now, cancel=True)
    clock.now = T0 + 200
    assert [r["id"] for r in await _runner(parts, owner="b", grace=1000).tick()] == [rec["id"]]
    with pytest.raises(Conflict, match="already finished"):
        await schedules.update(ENV, other, now_ms=now, cancel=True)
