"""Release automation in the console, in Chromium: the plan timeline, its guard chart drawn
from real ``track`` traffic, the operation buttons, and the scheduled changes with cancel.

With ``FLAGWIRE_DOC_SHOTS=1`` the screenshots go to ``docs/images/`` (the ones
``docs/releases.md`` shows); otherwise to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire.sync import SyncFlagClient
from tests.support.builders import flag
from tests.support.inprocess import InProcessServer
from tests.support.polling import poll_blocking
from tests.test_console import SHOTS, browser, expect, page, page_errors, sign_in

__all__ = ["browser", "page", "page_errors"]  # fixtures, used by name

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"


def _shot(page: Any, name: str) -> None:
    out = DOCS if os.environ.get("FLAGWIRE_DOC_SHOTS") else SHOTS
    out.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(150)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def release_server(redis_url: str) -> Iterator[InProcessServer]:
    proc = InProcessServer(
        redis_url, prefix=f"fwr{uuid.uuid4().hex[:10]}", env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"}
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _traffic(client: SyncFlagClient, stop: threading.Event) -> None:
    """200 users in a loop; one evaluation in 23 tracks an error, whatever it was served."""
    n = 0
    while not stop.is_set():
        for i in range(200):
            ctx = {"key": f"user-{i}"}
            client.variation("checkout", ctx, "old")
            n += 1
            if n % 23 == 0:
                client.track("error", ctx)
        stop.wait(0.05)


def test_plan_timeline_guard_chart_buttons_and_scheduled_changes(
    page: Any, release_server: InProcessServer
) -> None:
    server = release_server
    env = f"r{uuid.uuid4().hex[:8]}"
    base = f"/environments/{env}"
    server.api("POST", "/environments", {"key": env})
    sdk = server.api("POST", "/keys", {"name": "shop", "kind": "sdk", "env": env})["secret"]
    server.api(
        "PUT", f"{base}/flags/checkout", flag("checkout", variations=["new", "old"], fallthrough=1)
    )
    server.api("PUT", f"{base}/flags/banner", flag("banner"))
    due = time.time() + 3600
    later = server.api(
        "POST",
        f"{base}/schedule",
        {"flag": "banner", "change": {"on": False}, "due_at": due},
    )
    mine = server.api(
        "POST",
        f"{base}/schedule",
        {"flag": "checkout", "change": {"description": "after the release"}, "due_at": due + 60},
    )
    client = SyncFlagClient(server.url, sdk, app="shop", report_interval=0.2)
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(client, stop), daemon=True)
    traffic.start()
    try:
        plan = server.api(
            "POST",
            f"{base}/releases",
            {
                "flag": "checkout",
                "variation": 0,
                "guards": [
                    {"event": "error", "min_samples": 100, "confidence": 0.999, "name": "errors"}
                ],
                "stages": [
                    {"name": "10%", "percent": 10, "hold": 3600},
                    {"name": "50%", "percent": 50, "hold": 3600, "approval": True},
                    {"name": "everyone", "percent": 100},
                ],
            },
        )
        pid = plan["id"]
        readings = f"{base}/releases/{pid}/readings"
        poll_blocking(
            lambda: [r for r in server.api("GET", readings)["readings"] if r.get("z") is not None][
                1:
            ],
            within=30,
            what="two guard readings with enough data (one every 5 s)",
        )

        sign_in(page, server, f"/envs/{env}/releases")
        row = page.locator(f'#plans tr[data-plan="{pid}"]')
        expect(row).to_contain_text("running")
        expect(row).to_contain_text("1 of 3")
        expect(page.locator(f'#schedule tr[data-change="{later["id"]}"]')).to_contain_text(
            "pending"
        )
        _shot(page, "releases-list")

        row.get_by_role("link", name=pid).click()
        plan_el = page.locator("#plan")
        expect(plan_el).to_have_attribute("data-status", "running")
        current = page.locator('#plan-stages li[aria-current="step"]')
        expect(current).to_contain_text("10%")
        expect(current.locator("progress")).to_have_count(1)
        chart = page.locator('.guard[data-guard="errors"] svg')
        expect(chart.locator('polyline[data-series="new"]')).to_have_count(1)
        expect(chart.locator('polyline[data-series="old"]')).to_have_count(1)
        expect(page.locator('.guard[data-guard="errors"] .guard-value')).to_contain_text("z = ")
        expect(page.locator('#plan-actions button[data-op="approve"]')).to_be_disabled()
        expect(page.locator('#plan-events tr[data-what="started"]')).to_have_count(1)
        _shot(page, "release-plan")

        # Pause and resume: the API agrees, and nobody's stage moved.
        page.locator('#plan-actions button[data-op="pause"]').click()
        expect(plan_el).to_have_attribute("data-status", "paused")
        assert server.api("GET", f"{base}/releases/{pid}")["status"] == "paused"
        page.locator('#plan-actions button[data-op="resume"]').click()
        expect(plan_el).to_have_attribute("data-status", "running")
        # Advance (confirmed) to the 50% stage, which needs approval: Approve is offered.
        page.locator('#plan-actions button[data-op="advance"]').click()
        page.locator("#confirm-ok").click()
        expect(plan_el).to_have_attribute("data-stage", "1")
        page.locator('#plan-actions button[data-op="approve"]').click()
        expect(page.locator('#plan-events tr[data-what="approved"]')).to_have_count(1)
        assert server.api("GET", f"{base}/releases/{pid}")["approved"] is True
        # Roll back (confirmed): the flag is as it was before the plan.
        page.locator('#plan-actions button[data-op="rollback"]').click()
        page.locator("#confirm-ok").click()
        expect(plan_el).to_have_attribute("data-status", "rolled_back")
        expect(page.locator('#plan-events tr[data-what="rolled back"]')).to_contain_text(
            "applied by"
        )
        for op in ("pause", "resume", "advance", "approve", "rollback", "abandon"):
            expect(page.locator(f'#plan-actions button[data-op="{op}"]')).to_be_disabled()
        doc = server.api("GET", f"{base}/flags/checkout")
        assert doc["fallthrough"] == {"variation": 1}
        assert not [r for r in doc.get("rules") or [] if r["id"].startswith("release:")]
        poll_blocking(
            lambda: client.variation("checkout", {"key": "user-1"}, None) == "old",
            what="the client to serve old again",
        )
    finally:
        stop.set()
        traffic.join(5)
        client.close()

    # The flag page lists its scheduled change and plan; cancel it there.
    page.goto(f"{server.url}/envs/{env}/flags/checkout")
    mine_row = page.locator(f'#flag-schedule tr[data-change="{mine["id"]}"]')
    expect(mine_row).to_contain_text("pending")
    expect(page.locator("#flag-plans")).to_contain_text(pid)
    expect(page.locator("#flag-plans")).to_contain_text("rolled back")
    _shot(page, "flag-schedule")
    mine_row.get_by_role("button", name="Cancel").click()
    page.locator("#confirm-ok").click()
    expect(mine_row).to_have_attribute("data-status", "cancelled")
    assert server.api("GET", f"{base}/schedule/{mine['id']}")["status"] == "cancelled"

    # And the environment-wide list: cancel the other one.
    page.goto(f"{server.url}/envs/{env}/releases")
    other = page.locator(f'#schedule tr[data-change="{later["id"]}"]')
    other.get_by_role("button", name="Cancel").click()
    page.locator("#confirm-ok").click()
    expect(other).to_have_attribute("data-status", "cancelled")
    assert server.api("GET", f"{base}/schedule/{later['id']}")["status"] == "cancelled"
    expect(page.locator(f'#schedule tr[data-change="{mine["id"]}"]')).to_contain_text("cancelled")
