"""A Prometheus guard stops a release: a real Prometheus scrapes a small app whose error ratio
the test raises; the plan rolls back by itself and says why, when and how fast, and the real
clients of the server serve the old variation again within a second of the detection."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flagwire import FlagClient
from flagwire.core.errors import ValidationError
from flagwire_server.release.guards import parse_guards
from flagwire_server.release.prometheus import breach
from tests.support.builders import flag
from tests.support.inprocess import InProcessServer
from tests.support.polling import poll
from tests.support.redisproc import free_port
from tests.support.server import _cleanup_prefix

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
BASE = "/api/v1/environments/production"


def test_guards_parsed_and_breaches() -> None:
    [g] = parse_guards([{"query": "up", "max": 0.5}])
    assert g["action"] == "rollback"
    assert breach(g, 0.6) == "up = 0.6, above 0.5"
    assert breach(g, 0.5) is None
    assert breach({"name": "q", "min": 10}, 3) == "q = 3, below 10"
    with pytest.raises(ValidationError) as err:
        parse_guards([{"query": "", "max": 1, "min": 0, "action": "panic", "x": 1}])
    paths = {p for p, _ in err.value.errors}
    assert paths == {"guards[0].x", "guards[0].query", "guards[0]", "guards[0].action"}


class _App:
    """A tiny app exposing ``app_error_ratio`` for Prometheus to scrape."""

    def __init__(self) -> None:
        self.ratio = 0.01
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE app_error_ratio gauge\napp_error_ratio {app.ratio}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def prometheus() -> Iterator[tuple[str, _App]]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("no prometheus binary (apt-get install prometheus)")
    app = _App()
    tmp = Path(tempfile.mkdtemp(prefix="fw-prom-"))
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: app\n    static_configs: [{{targets: ['127.0.0.1:{app.port}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        app.server.shutdown()
        app.server.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _sample(url: str) -> bool:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{url}/api/v1/query", params={"query": "app_error_ratio"})
        return bool(r.json()["data"]["result"])


async def test_prometheus_guard_rolls_the_plan_back(
    prometheus: tuple[str, _App], redis_url: str, redis_prefix: str, admin_key: str
) -> None:
    url, app = prometheus
    await poll(
        lambda: _sample(url),
        within=30,
        what="Prometheus to scrape the app",
        ignore=(httpx.HTTPError, KeyError, ValueError),
    )
    server = await asyncio.to_thread(
        InProcessServer(
            redis_url,
            prefix=redis_prefix,
            admin_key=admin_key,
            env={"FLAGWIRE_PROMETHEUS_URL": url},
        ).start
    )
    clients: list[FlagClient] = []
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        ) as http:
            r = await http.post(
                f"{BASE}/flags", json=flag("checkout", variations=["new", "old"], fallthrough=1)
            )
            before = r.json()["flag"]
            r = await http.post(
                "/api/v1/keys",
                json={"name": "p", "kind": "sdk", "env": "production"},
            )
            sdk = r.json()["secret"]
            clients = [FlagClient(server.url, sdk, report_interval=None) for _ in range(3)]
            for c in clients:
                await c.start(timeout=10)
            back: dict[int, float] = {}

            def note(i: int, c: FlagClient) -> None:
                def on_change(_change: object) -> None:
                    if all(
                        c.variation("checkout", {"key": f"u-{k}"}, None) == "old"
                        for k in range(100)
                    ):
                        back.setdefault(i, time.time())
                    else:
                        back.pop(i, None)

                c.on_change(on_change, "checkout")

            for i, c in enumerate(clients):
                note(i, c)
            r = await http.post(
                f"{BASE}/releases",
                json={
                    "flag": "checkout",
                    "variation": 0,
                    "stages": [{"percent": 10, "hold": 3600}, {"percent": 100}],
                    "guards": [
                        {"name": "error ratio", "query": "max(app_error_ratio)", "max": 0.05}
                    ],
                },
            )
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            app.ratio = 0.2  # the new code misbehaves

            async def rolled_back() -> dict[str, Any] | None:
                plan = (await http.get(f"{BASE}/releases/{pid}")).json()
                return plan if plan["status"] == "rolled_back" else None

            plan = await poll(rolled_back, within=20, what="the guard to roll the plan back")
            assert plan["reason"] == "guard breached: error ratio = 0.2, above 0.05"
            event = plan["events"][-1]
            assert event["what"] == "rolled back"
            assert event["by"] == "guard"
            assert event["at_ms"] - event["detected_ms"] < 5000
            assert event["summary"].startswith(f"applied by {len(clients)} of {len(clients)} in ")

            async def all_back() -> bool:
                return len(back) == len(clients)

            await poll(all_back, within=5, what="every client to serve old again")
            late = [t * 1000 - event["detected_ms"] for t in back.values()]
            assert max(late) < 1000, late
            metrics = (await http.get("/metrics")).text
            assert (
                'flagwire_release_guard_checks_total{env="production",outcome="breach"} 1.0'
                in metrics
            )
            assert 'flagwire_release_events_total{env="production",what="rolled back"} 1.0' in (
                metrics
            )
            doc = (await http.get(f"{BASE}/flags/checkout")).json()
            assert doc["fallthrough"] == before["fallthrough"]
            assert doc["rules"] == before["rules"]
            # Guards need a Prometheus: refused clearly without one is tested by the
            # schema; a bad guard is a 422 with its path.
            r = await http.post(
                f"{BASE}/releases",
                json={
                    "flag": "checkout",
                    "variation": 0,
                    "stages": [{"percent": 100}],
                    "guards": [{"query": "up"}],
                },
            )
            assert r.status_code == 422
            assert "guards[0]" in r.text
    finally:
        for c in clients:
            await c.close()
        await asyncio.to_thread(server.stop)
        _cleanup_prefix(redis_url, redis_prefix)
