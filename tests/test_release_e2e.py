"""A release plan runs staff -> 100% across two server processes while real clients evaluate.

Four ``flagwire.FlagClient`` instances (two on each server) evaluate 300
contexts, staff included, every few milliseconds for the whole plan.  Each
context's sequence of values, as each client saw it, must only ever move from
old to new: no stage, pause or resume sends anyone back or reshuffles them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from flagwire import FlagClient
from tests.support.builders import flag, segment
from tests.support.polling import poll
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow]

BASE = "/environments/production"
CONTEXTS = [{"key": f"user-{i}"} for i in range(300)] + [{"key": "staff-1"}, {"key": "staff-2"}]


async def test_plan_moves_every_client_only_from_old_to_new(
    make_server: Callable[..., ServerProcess],
) -> None:
    a, b = make_server(), make_server()
    a.api("POST", f"{BASE}/segments", segment("staff", included=["staff-1", "staff-2"]))
    a.api("POST", f"{BASE}/flags", flag("checkout", variations=["new", "old"], fallthrough=1))
    secret = a.api("POST", "/keys", {"name": "e2e", "kind": "sdk", "env": "production"})["secret"]
    # The other server's key ring learns the new key within its refresh interval.
    await poll(
        lambda: (
            b.request(
                "POST",
                "/api/v1/environments/production/evaluate",
                {"context": {"key": "u"}},
                key=secret,
            )[0]
            == 200
        ),
        within=10,
        what="server b to know the SDK key",
    )
    clients = [FlagClient(s.url, secret) for s in (a, b, a, b)]
    for c in clients:
        await c.start(timeout=10)
    seen: list[dict[str, list[str]]] = [{} for _ in clients]
    stop = asyncio.Event()

    async def watch(i: int) -> None:
        while not stop.is_set():
            for ctx in CONTEXTS:
                value = clients[i].variation("checkout", ctx, "default")
                runs = seen[i].setdefault(ctx["key"], [])
                if not runs or runs[-1] != value:
                    runs.append(value)
            await asyncio.sleep(0.005)

    watchers = [asyncio.create_task(watch(i)) for i in range(len(clients))]
    try:
        stages = [
            {"segments": ["staff"], "hold": 0.5},
            {"percent": 10, "hold": 0.5},
            {"percent": 50, "hold": 3},  # long enough to pause it on a loaded machine
            {"percent": 100, "hold": 0},
        ]
        plan = a.api(
            "POST", f"{BASE}/releases", {"flag": "checkout", "variation": 0, "stages": stages}
        )
        pid = plan["id"]

        async def at_stage(n: int) -> bool:
            return bool(b.api("GET", f"{BASE}/releases/{pid}")["stage"] >= n)

        await poll(lambda: at_stage(2), within=20, what="the 50% stage")

        def pause() -> dict[str, Any] | None:
            # Through the other server; a 409 "being changed" (the loop writing the
            # stage and waiting for the clients' acks) says try again in a moment.
            status, text = b.request("POST", f"/api/v1{BASE}/releases/{pid}/pause")
            assert status in (200, 409), text
            return json.loads(text) if status == 200 else None

        paused = await poll(pause, within=20, what="the plan to pause")
        assert paused["status"] == "paused"
        await asyncio.sleep(3.5)  # past the hold: a paused plan stays where it is
        assert b.api("GET", f"{BASE}/releases/{pid}")["stage"] == paused["stage"]
        b.api("POST", f"{BASE}/releases/{pid}/resume")

        async def completed() -> dict[str, Any] | None:
            p = a.api("GET", f"{BASE}/releases/{pid}")
            return p if p["status"] == "completed" else None

        done = await poll(completed, within=20, what="the plan to complete")

        async def everyone_new() -> bool:
            return all(
                c.variation("checkout", ctx, "default") == "new"
                for c in clients
                for ctx in CONTEXTS
            )

        await poll(everyone_new, within=5, what="every client to serve new to everyone")
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*watchers)
        for c in clients:
            await c.close()
    for i, per_ctx in enumerate(seen):
        for key, runs in per_ctx.items():
            assert runs in (["old", "new"], ["new"]), (i, key, runs)
    # Staff got it at the first stage, well before the 100% stage.
    assert all(seen[i]["staff-1"][-1] == "new" for i in range(len(clients)))
    whats = [e["what"] for e in done["events"]]
    assert whats[0] == "started"
    assert "paused" in whats
    assert "resumed" in whats
    assert whats[-1] == "completed"
    confirmed = [e for e in done["events"] if "summary" in e]
    assert confirmed, done["events"]  # writes confirmed by the clients' acknowledgements
