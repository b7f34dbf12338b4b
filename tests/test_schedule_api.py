"""Scheduled changes through the admin API, in real time, on the real app and a real Redis."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.builders import flag
from tests.support.polling import poll

BASE = "/api/v1/environments/production"


async def _flag(http: httpx.AsyncClient, key: str = "f") -> dict[str, Any]:
    r = await http.post(f"{BASE}/flags", json=flag(key, on=True))
    assert r.status_code == 201, r.text
    return dict(r.json()["flag"])


async def _done(http: httpx.AsyncClient, change_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        rec = (await http.get(f"{BASE}/schedule/{change_id}")).json()
        return rec if rec["status"] not in ("pending", "running") else None

    return dict(await poll(finished, within=10, what=f"{change_id} to run"))


async def _with_summary(http: httpx.AsyncClient, change_id: str) -> dict[str, Any] | None:
    rec = (await http.get(f"{BASE}/schedule/{change_id}")).json()
    return rec if "summary" in rec else None


async def test_scheduled_kill_switch_runs_on_time_and_is_audited(asgi: Any) -> None:
    _app, http = asgi
    await _flag(http)
    due = time.time() + 0.4
    r = await http.post(
        f"{BASE}/schedule", json={"flag": "f", "change": {"on": False}, "due_at": due, "wait": 1}
    )
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["status"] == "pending"
    assert rec["if_changed"] == "fail"
    assert rec["base_version"] == 1
    listed = (await http.get(f"{BASE}/schedule", params={"flag": "f"})).json()["changes"]
    assert [c["id"] for c in listed] == [rec["id"]]
    assert (await http.get(f"{BASE}/flags/f")).json()["on"] is True

    done = await _done(http, rec["id"])
    assert done["status"] == "applied"
    # The propagation is recorded once the clients acknowledged (or ``wait`` passed).
    done = await poll(
        lambda: _with_summary(http, rec["id"]), within=5, what="the propagation summary"
    )
    assert 0 <= done["lateness_ms"] < 1000
    assert done["flag_version"] == 2
    assert done["summary"].startswith("applied by ")
    assert "propagation" in done
    assert (await http.get(f"{BASE}/flags/f")).json()["on"] is False
    metrics = (await http.get("/metrics")).text
    assert 'flagwire_scheduled_changes_total{env="production",status="applied"} 1.0' in metrics
    assert "flagwire_schedule_lateness_seconds_count 1.0" in metrics
    entries = (await http.get(f"{BASE}/audit")).json()["entries"]
    assert entries[0]["actor"] == f"scheduler, created by {rec['created_by']} ({rec['id']})"
    assert (await http.get(f"{BASE}/schedule", params={"status": "applied"})).json()["changes"]

    # Finished: no edit, no cancel.
    r = await http.patch(f"{BASE}/schedule/{rec['id']}", json={"due_at": time.time() + 60})
    assert r.status_code == 409
    assert "already applied" in r.json()["detail"]
    assert (await http.delete(f"{BASE}/schedule/{rec['id']}")).status_code == 409


async def test_edit_and_cancel_a_pending_change(asgi: Any) -> None:
    _app, http = asgi
    await _flag(http)
    later = time.time() + 3600
    rec = (
        await http.post(
            f"{BASE}/schedule", json={"flag": "f", "change": {"on": False}, "due_at": later}
        )
    ).json()
    await http.patch(f"{BASE}/flags/f", json={"name": "renamed"})
    r = await http.patch(
        f"{BASE}/schedule/{rec['id']}",
        json={"due_at": "2030-01-01T00:00:00Z", "if_changed": "skip"},
    )
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["due_at"].startswith("2030-01-01T00:00:00")
    assert edited["if_changed"] == "skip"
    assert edited["base_version"] == 2  # an edit reads the flag again
    r = await http.delete(f"{BASE}/schedule/{rec['id']}")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    got = (await http.get(f"{BASE}/schedule/{rec['id']}")).json()
    assert got["status"] == "cancelled"
    assert got["cancelled_by"].startswith("admin")


async def test_bad_requests_are_refused_with_a_problem(asgi: Any) -> None:
    _app, http = asgi
    await _flag(http)
    soon = time.time() + 60
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"flag": "f", "change": {"on": False}}, 422, "due_at"),
        ({"flag": "f", "change": {"on": "no"}, "due_at": soon}, 422, "on"),
        ({"flag": "f", "action": "rollout", "change": {"variation": 7}, "due_at": soon}, 422, ""),
        ({"flag": "f", "action": "restore", "version": 9, "due_at": soon}, 422, "version"),
        ({"flag": "nope", "change": {"on": False}, "due_at": soon}, 404, ""),
        ({"flag": "f", "change": {}, "due_at": "2030-01-01T00:00:00"}, 422, "due_at"),
    ]
    for body, status, field in cases:
        r = await http.post(f"{BASE}/schedule", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        if field:
            assert field in r.text
    r = await http.post(
        "/api/v1/environments/nowhere/schedule",
        json={"flag": "f", "change": {}, "due_at": soon},
    )
    assert r.status_code == 404
    assert (await http.get(f"{BASE}/schedule/sch_000000000000")).status_code == 404
    assert (await http.get(f"{BASE}/schedule", params={"status": "later"})).status_code == 400
    assert (await http.get(f"{BASE}/schedule")).json()["changes"] == []
