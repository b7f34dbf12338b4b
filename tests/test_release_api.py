"""Release plans through the admin API on the real app and a real Redis (short holds)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support.builders import flag, segment
from tests.support.polling import poll

BASE = "/api/v1/environments/production"


async def _setup(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.post(f"{BASE}/segments", json=segment("staff", included=["alice"]))
    assert r.status_code == 201, r.text
    r = await http.post(
        f"{BASE}/flags", json=flag("checkout", variations=["new", "old"], fallthrough=1)
    )
    assert r.status_code == 201, r.text
    return dict(r.json()["flag"])


async def _plan(http: httpx.AsyncClient, plan_id: str) -> dict[str, Any]:
    return dict((await http.get(f"{BASE}/releases/{plan_id}")).json())


async def test_plan_runs_to_completion_with_an_approval(asgi: Any) -> None:
    _app, http = asgi
    await _setup(http)
    stages = [
        {"segments": ["staff"], "hold": 0.2},
        {"percent": 10, "hold": 0.2, "approval": True},
        {"percent": 100},
    ]
    r = await http.post(
        f"{BASE}/releases", json={"flag": "checkout", "variation": 0, "stages": stages}
    )
    assert r.status_code == 201, r.text
    plan = r.json()
    assert plan["stage"] == 0
    assert plan["events"][0]["what"] == "started"
    doc = (await http.get(f"{BASE}/flags/checkout")).json()
    assert doc["rules"][0]["id"] == f"release:{plan['id']}"
    # One active plan per flag.
    again = await http.post(
        f"{BASE}/releases", json={"flag": "checkout", "variation": 0, "template": "standard"}
    )
    assert again.status_code == 409
    await poll(lambda: _at(http, plan["id"], 1), within=10, what="stage 1")
    # Stage 1 needs an approval: the hold ends, the plan stays.
    await asyncio.sleep(0.6)
    assert (await _plan(http, plan["id"]))["stage"] == 1
    r = await http.post(f"{BASE}/releases/{plan['id']}/approve")
    assert r.status_code == 200
    done = await poll(lambda: _status(http, plan["id"], "completed"), within=10, what="done")
    assert [e["what"] for e in done["events"]] == [
        "started",
        "advanced on schedule",
        "approved",
        "advanced on schedule",
        "completed",
    ]
    doc = (await http.get(f"{BASE}/flags/checkout")).json()
    assert doc["fallthrough"] == {"variation": 0}
    assert (await http.post(f"{BASE}/releases/{plan['id']}/pause")).status_code == 409
    listed = (await http.get(f"{BASE}/releases", params={"flag": "checkout"})).json()["plans"]
    assert [p["id"] for p in listed] == [plan["id"]]


async def test_pause_resume_advance_rollback(asgi: Any) -> None:
    _app, http = asgi
    before = await _setup(http)
    stages = [{"percent": 5, "hold": 3600}, {"percent": 50, "hold": 3600}, {"percent": 100}]
    plan = (
        await http.post(
            f"{BASE}/releases", json={"flag": "checkout", "variation": 0, "stages": stages}
        )
    ).json()
    pid = plan["id"]
    assert (await http.post(f"{BASE}/releases/{pid}/pause")).json()["status"] == "paused"
    assert (await http.post(f"{BASE}/releases/{pid}/advance")).status_code == 409
    assert (await http.post(f"{BASE}/releases/{pid}/resume")).json()["status"] == "running"
    r = await http.post(f"{BASE}/releases/{pid}/advance")
    assert r.json()["stage"] == 1
    weights = (await http.get(f"{BASE}/flags/checkout")).json()["fallthrough"]["rollout"]
    assert [v["weight"] for v in weights["variations"]] == [50_000, 50_000]
    r = await http.post(f"{BASE}/releases/{pid}/rollback")
    assert r.status_code == 200, r.text
    rolled = r.json()
    assert rolled["status"] == "rolled_back"
    assert rolled["events"][-1]["what"] == "rolled back"
    doc = (await http.get(f"{BASE}/flags/checkout")).json()
    for field in ("rules", "fallthrough", "on", "variations", "salt"):
        assert doc.get(field) == before.get(field)
    # The flag is free for a new plan.
    r = await http.post(
        f"{BASE}/releases", json={"flag": "checkout", "variation": 0, "template": "standard"}
    )
    assert r.status_code == 201, r.text


async def test_edit_outside_the_plan_pauses_it(asgi: Any) -> None:
    _app, http = asgi
    await _setup(http)
    plan = (
        await http.post(
            f"{BASE}/releases",
            json={
                "flag": "checkout",
                "variation": 0,
                "stages": [{"percent": 5, "hold": 3600}, {"percent": 100}],
            },
        )
    ).json()
    await http.patch(f"{BASE}/flags/checkout", json={"name": "edited by hand"})
    r = await http.post(f"{BASE}/releases/{plan['id']}/advance")
    assert r.json()["status"] == "paused"
    assert "edited outside the plan" in r.json()["reason"]
    assert (await http.get(f"{BASE}/flags/checkout")).json()["name"] == "edited by hand"
    r = await http.post(f"{BASE}/releases/{plan['id']}/abandon")
    assert r.json()["status"] == "abandoned"


async def test_bad_plans_refused(asgi: Any) -> None:
    _app, http = asgi
    await _setup(http)
    for body, status in [
        ({"flag": "checkout", "variation": 1, "template": "standard"}, 422),  # the old one
        ({"flag": "checkout", "variation": 0, "template": "nope"}, 422),
        ({"flag": "checkout", "variation": 0, "stages": [{"segments": ["x"]}]}, 422),
        ({"flag": "nope", "variation": 0, "template": "standard"}, 404),
    ]:
        r = await http.post(f"{BASE}/releases", json=body)
        assert r.status_code == status, (body, r.text)
    r = await http.put(
        "/api/v1/environments/production/release-templates/quick",
        json={"stages": [{"percent": 50, "hold": 1}, {"percent": 100}]},
    )
    assert r.status_code == 200, r.text
    names = (await http.get("/api/v1/environments/production/release-templates")).json()
    assert set(names["templates"]) == {"standard", "quick"}
    assert (await http.post(f"{BASE}/releases/rp_000000000000/pause")).status_code == 404


async def _at(http: httpx.AsyncClient, plan_id: str, stage: int) -> bool:
    return bool((await _plan(http, plan_id))["stage"] == stage)


async def _status(http: httpx.AsyncClient, plan_id: str, status: str) -> dict[str, Any] | None:
    plan = await _plan(http, plan_id)
    return plan if plan["status"] == status else None


async def test_the_new_variation_of_a_two_variation_flag_is_the_one_not_served(asgi: Any) -> None:
    """``flagwire release start KEY --template standard`` on an on/off flag just works.

    (It defaulted to variation 0, which a boolean flag serving ``false`` already serves:
    a new user's first plan was a 422.)
    """
    _app, http = asgi
    await _setup(http)  # serves variation 1 ("old")
    stages = [{"percent": 10, "hold": 3600}, {"percent": 100}]
    r = await http.post(f"{BASE}/releases", json={"flag": "checkout", "stages": stages})
    assert r.status_code == 201, r.text
    assert r.json()["variation"] == 0
    r = await http.post(
        f"{BASE}/flags", json=flag("three", variations=["a", "b", "c"], fallthrough=0)
    )
    assert r.status_code == 201, r.text
    r = await http.post(f"{BASE}/releases", json={"flag": "three", "template": "standard"})
    assert r.status_code == 422, r.text
    assert "3 variations" in r.text
