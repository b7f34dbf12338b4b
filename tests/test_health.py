"""/healthz, /readyz, /metrics and what the logs hold."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.applications import Starlette

from tests.support.inprocess import InProcessServer
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient, connect_raw

pytestmark = pytest.mark.timeout(60)


async def test_health_ready_and_metrics(inprocess_server: InProcessServer) -> None:
    server = inprocess_server
    status, text = server.get("/healthz")
    assert status == 200
    assert json.loads(text)["status"] == "ok"
    status, text = server.get("/readyz")
    assert status == 200
    assert json.loads(text)["ready"] is True

    c = await StreamClient(server.ws_url, server.admin_key, env="production").connect()
    try:
        await c.wait_version(0)
        assert server.request("GET", "/api/v1/environments/production")[0] == 200
        assert server.request("GET", "/api/v1/environments/nope")[0] == 404
        _status, metrics = server.get("/metrics")
        for name in (
            "flagwire_connected_clients",
            "flagwire_messages_sent_total",
            "flagwire_changes_applied_total",
            "flagwire_propagation_seconds_bucket",
            "flagwire_redis_errors_total",
            "flagwire_api_requests_total",
        ):
            assert name in metrics, name
        assert 'flagwire_connected_clients{env="production"} 1.0' in metrics
        # Requests are counted by route template, not by raw path.
        assert 'route="/api/v1/environments/{env}"' in metrics
        assert 'status="404"' in metrics
        assert "/environments/nope" not in metrics
    finally:
        await c.close()


async def test_keys_never_reach_the_logs(server: ServerProcess) -> None:
    for key in ("fw_sdk_leakcheck123", server.admin_key):
        try:
            ws = await connect_raw(server.ws_url, key)
            await ws.close()
        except Exception:
            pass
        server.request("GET", "/api/v1/environments", key=key)
    server.request("GET", "/api/v1/keys", key="fw_admin_leakcheck456")
    out = server.output()
    for secret in ("fw_sdk_leakcheck123", "fw_admin_leakcheck456", server.admin_key):
        assert secret not in out


def _request_labels(metrics: str) -> set[tuple[str, str]]:
    """``(route, method)`` of every flagwire_api_requests_total series."""
    out = set()
    for line in metrics.splitlines():
        if line.startswith("flagwire_api_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out.add((labels["route"], labels["method"]))
    return out


async def test_metrics_labels_stay_bounded_whatever_clients_send(
    asgi: tuple[Starlette, httpx.AsyncClient],
) -> None:
    """Invented methods and paths must not each add a series (issue 10, item 8)."""
    _app, http = asgi
    before = (await http.get("/metrics")).text
    for i in range(300):
        await http.request(f"BREW{i}", "/api/v1/environments/production")
        await http.get(f"/no/such/path/{i}")
        await http.get(f"/static/nothing-{i}.css")
    after = (await http.get("/metrics")).text
    labels = _request_labels(after)
    methods = {method for _route, method in labels}
    routes = {route for route, _method in labels}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert ("/api/v1/environments/{env}", "other") in labels
    assert "<unmatched>" in routes
    assert not any("BREW" in m or "/no/such" in r or "nothing-" in r for r, m in labels)
    # 900 odd requests added a handful of series, not hundreds.
    assert len(after) - len(before) < 20_000, len(after) - len(before)
