"""Fleet insight in the console, in Chromium: the flag chart from real traffic, Clients, Cleanup."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flagwire.sync import SyncFlagClient
from tests.support.builders import flag, rollout
from tests.support.inprocess import InProcessServer
from tests.support.polling import poll_blocking
from tests.test_console import browser, expect, page, page_errors, sign_in

__all__ = ["browser", "page", "page_errors"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def insight_server(redis_url: str) -> Iterator[InProcessServer]:
    proc = InProcessServer(
        redis_url, prefix=f"fwi{uuid.uuid4().hex[:10]}", env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"}
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_chart_clients_and_cleanup_from_real_traffic(
    page: Any, insight_server: InProcessServer
) -> None:
    server = insight_server
    env = f"i{uuid.uuid4().hex[:8]}"
    server.api("POST", "/environments", {"key": env})
    sdk = server.api("POST", "/keys", {"name": "shop", "kind": "sdk", "env": env})["secret"]
    server.api(
        "PUT", f"/environments/{env}/flags/chart", flag("chart", fallthrough=rollout(50, 50))
    )
    server.api("PUT", f"/environments/{env}/flags/unused", flag("unused"))
    client = SyncFlagClient(server.url, sdk, app="shop", instance="shop-1", report_interval=0.2)
    try:
        for i in range(40):
            client.bool_variation("chart", {"key": f"user-{i}"}, False)
        insight = f"/environments/{env}/flags/chart/insight?window=3600&step=60"
        poll_blocking(
            lambda: sum(v["evaluations"] for v in server.api("GET", insight)["variations"]) == 40,
            what="40 evaluations counted",
        )
        sign_in(page, server, f"/envs/{env}/flags/chart")
        lines = page.locator("#insight-chart polyline")
        expect(lines).to_have_count(2)
        totals = [int(lines.nth(i).get_attribute("data-total") or 0) for i in range(2)]
        assert sum(totals) == 40
        assert all(t > 0 for t in totals)
        expect(page.locator("#insight-legend")).to_contain_text("variation 0")
        expect(page.locator("#insight-apps")).to_have_text("Used by: shop")

        page.get_by_role("link", name="Clients").click()
        row = page.locator('#clients tr[data-instance="shop-1"]')
        expect(row).to_contain_text("shop")
        expect(row).to_contain_text("flagwire-python")
        expect(row.locator(".lag")).to_have_text("0")
    finally:
        client.close()

    page.get_by_role("link", name="Cleanup").click()
    expect(page).to_have_url(re.compile(r"/cleanup"))
    expect(page.locator('#cleanup tr[data-flag="unused"] .why')).to_have_text("not evaluated")
    expect(page.locator('#cleanup tr[data-flag="chart"]')).to_have_count(0)

    # Archive: SDKs no longer see the flag; restore brings it back as a new version.
    watcher = SyncFlagClient(server.url, sdk, report_interval=None)
    try:
        assert watcher.variation("unused", {"key": "u"}, None) is True
        page.locator('button[data-archive="unused"]').click()
        expect(page.locator('#archived tr[data-flag="unused"]')).to_be_visible()
        expect(page.locator('#cleanup tr[data-flag="unused"]')).to_have_count(0)
        poll_blocking(lambda: "unused" not in (watcher.snapshot.flags if watcher.snapshot else {}))
        assert watcher.variation("unused", {"key": "u"}, "gone") == "gone"
        page.locator('button[data-restore="unused"]').click()
        expect(page.locator('#archived tr[data-flag="unused"]')).to_have_count(0)
        poll_blocking(lambda: watcher.variation("unused", {"key": "u"}, None) is True)
        assert server.api("GET", f"/environments/{env}/archived")["flags"] == []
    finally:
        watcher.close()
