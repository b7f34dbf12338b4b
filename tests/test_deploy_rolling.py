"""A rolling restart behind deploy's nginx while clients are connected and flags change.

Three servers (the image's command, env-only configuration) behind
deploy/nginx/nginx.conf; 1,000 protocol clients (``bench/_swarm.py``, reconnecting
with jitter and resuming from their version) connect through nginx; a flag
changes every 50 ms through nginx's admin API while each server in turn is
stopped with SIGTERM (streams close with 1001) and started again.  Afterwards:

* every client holds exactly the store's flags at the store's version;
* no client saw a version go backwards;
* every change the API acknowledged is in the store;
* connections are spread over the servers, not piled onto the last one standing
  (the server rolled last starts empty: nothing moves streams back to it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from flagwire.core.limits import STREAM_PATH
from tests.support.polling import poll_blocking
from tests.support.server import _cleanup_prefix
from tests.test_deploy_nginx import NGINX, ImageServer, _connected, nginx

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(NGINX is None, reason="no nginx binary (apt-get install -y nginx)"),
]

CLIENTS = 1000
ENV = "rolling"


@pytest.fixture
def three_servers(redis_url: str, redis_prefix: str, admin_key: str) -> Iterator[list[ImageServer]]:
    servers = [ImageServer(redis_url, prefix=redis_prefix, admin_key=admin_key) for _ in range(3)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.kill()
        _cleanup_prefix(redis_url, redis_prefix)


def test_rolling_restart_loses_nothing_and_rebalances(
    three_servers: list[ImageServer], admin_key: str
) -> None:
    from bench._swarm import Swarm

    flags = [f"roll-{i}" for i in range(5)]
    with (
        nginx([s.port for s in three_servers]) as addr,
        httpx.Client(
            base_url=f"http://{addr}/api/v1",
            timeout=10,
            headers={"Authorization": f"Bearer {admin_key}"},
        ) as http,
    ):
        assert http.post("/environments", json={"key": ENV, "name": ENV}).status_code in (200, 201)
        for key in flags:
            r = http.put(
                f"/environments/{ENV}/flags/{key}",
                json={
                    "key": key,
                    "on": False,
                    "variations": [True, False],
                    "off_variation": 1,
                    "fallthrough": {"variation": 0},
                },
            )
            assert r.status_code in (200, 201), r.text
        sdk = http.post("/keys", json={"name": "roll", "kind": "sdk", "env": ENV}).json()["secret"]
        poll_blocking(
            lambda: all(_knows(s.ws_url, sdk) for s in three_servers),
            10,
            "every instance to know the new SDK key (key ring polls)",
            0.05,
        )
        swarm = Swarm(
            f"ws://{addr}{STREAM_PATH}",
            CLIENTS,
            processes=1,
            headers={"Authorization": f"Bearer {sdk}"},
            reconnect=True,
            spread=1.0,
        )
        try:
            assert swarm.connect(concurrency=100)["ok"] == CLIENTS
            acked: dict[str, int] = {}
            refused = 0
            i = 0

            def change() -> None:
                nonlocal i, refused
                key = flags[i % len(flags)]
                i += 1
                try:
                    r = http.patch(f"/environments/{ENV}/flags/{key}", json={"on": i % 2 == 0})
                except httpx.HTTPError:
                    refused += 1
                    return
                if r.status_code >= 400:
                    refused += 1
                    return
                acked[key] = max(acked.get(key, 0), int(r.json()["version"]))

            for server in three_servers:
                for _ in range(10):
                    change()
                    time.sleep(0.05)
                server.stop()
                for _ in range(10):  # changes while it is down reach the others' clients
                    change()
                    time.sleep(0.05)
                server.start()
                for _ in range(40):  # changes while its clients spread back
                    change()
                    time.sleep(0.05)
                time.sleep(1.0)  # an operator waits for /readyz and a moment of traffic
            assert len(acked) == len(flags)

            body = http.get(f"/environments/{ENV}/flags").json()
            store = {d["key"]: int(d["version"]) for d in body["flags"]}
            version = int(http.get(f"/environments/{ENV}").json()["version"])
            assert all(store[k] >= v for k, v in acked.items()), (store, acked)
            deadline = time.monotonic() + 30
            while True:
                check = swarm.check(store, version)
                stats = swarm.stats()
                if (
                    not check["wrong"] and not check["behind"] and stats["open"] == CLIENTS
                ) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert check == {"wrong": 0, "behind": 0}, (check, stats)
            assert stats["open"] == CLIENTS
            assert stats["stale"] == 0, "a client saw a version go backwards"

            per_server = [
                _connected(httpx.get(f"{s.url}/metrics", timeout=5).text) for s in three_servers
            ]
            assert sum(per_server) == CLIENTS, per_server
            # least_conn sends each stopped server's clients to the emptiest one, so nothing
            # piles onto the last one standing; the server rolled last starts empty and
            # fills on churn (no server-side rebalancing yet)
            assert max(per_server) <= CLIENTS * 0.55, (per_server, stats)
            assert sorted(per_server)[1] >= CLIENTS * 0.3, per_server
        finally:
            swarm.close()


def _knows(ws_url: str, secret: str) -> bool:
    """True when the instance accepts ``secret`` on its stream (its key ring has it)."""
    try:
        with ws_connect(
            ws_url, additional_headers={"Authorization": f"Bearer {secret}"}, open_timeout=3
        ):
            return True
    except (InvalidStatus, OSError, TimeoutError):
        return False
