"""``flagwire serve`` as a process: embedded store, first start, SIGTERM, workers."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Callable

import pytest
import redis

from tests.support.builders import flag
from tests.support.server import ServerProcess
from tests.support.streamclient import StreamClient

pytestmark = pytest.mark.timeout(120)


async def test_embedded_store_first_start_keys_and_flags_survive_restart(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(redis_url=None, admin_key="")  # no Redis URL, no FLAGWIRE_ADMIN_KEY
    keys_file = srv.data_dir / "initial-keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys = json.loads(keys_file.read_text())
    assert keys["admin_key"] in srv.output()  # printed once...
    assert not any(keys["admin_key"] in json.dumps(r) for r in srv.log_records())  # ...not logged
    srv.admin_key = keys["admin_key"]
    srv.api("PUT", "/environments/production/flags/survivor", flag("survivor", on=False))

    assert srv.stop(timeout=40) == 0  # Valkey's own shutdown is included
    first_output = srv.output()
    srv.start()
    assert srv.output()[len(first_output) :].count(keys["admin_key"]) == 0  # not printed again
    assert (srv.data_dir / "valkey").is_dir()
    c = await StreamClient(srv.ws_url, keys["sdk_key"]).connect()
    try:
        await c.wait_version(1)
        assert c.flags["survivor"]["on"] is False
    finally:
        await c.close()


async def test_sigterm_closes_streams_with_1001_and_exits(server: ServerProcess) -> None:
    c = await StreamClient(server.ws_url, server.admin_key, env="production").connect()
    await c.wait_version(0)
    started = time.monotonic()
    code = await asyncio.to_thread(server.stop)
    assert code == 0
    assert time.monotonic() - started < 10
    assert await c.wait_closed(5) == 1001


async def test_workers_each_serve_and_each_receive_every_change(
    make_server: Callable[..., ServerProcess], redis_url: str, redis_prefix: str
) -> None:
    srv = make_server(workers=2)
    # A worker that started before the first-start bootstrap created `production`
    # loads it on its next discovery pass (every 2 s); wait until both have it,
    # since the assertion below is that both workers read the change log.
    r = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 15
        while r.hlen(f"{redis_prefix}:{{production}}:floors") < 2:
            assert time.monotonic() < deadline, "second worker never loaded production"
            await asyncio.sleep(0.1)
    finally:
        r.close()
    srv.api("PUT", "/environments/production/flags/f", flag("f"))
    clients = [StreamClient(srv.ws_url, srv.admin_key, env="production") for _ in range(30)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        await asyncio.gather(*(c.wait_version(1) for c in clients))
        status, text = await asyncio.to_thread(
            srv.request, "PATCH", "/api/v1/environments/production/flags/f?wait=15", {"on": False}
        )
        assert status == 200, text
        body = json.loads(text)
        for c in clients:
            await c.wait_version(body["env_version"], 5)
            assert c.flags["f"]["on"] is False
        prop = body["propagation"]
        assert prop["instances"] == 2  # both workers read the change log
        assert prop["connected"] == prop["acknowledged"] == 30
        _status, metrics = srv.get("/metrics")
        assert 'flagwire_connected_clients{env="production"} 30.0' in metrics
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_sigterm_with_workers_closes_every_stream_with_1001(
    make_server: Callable[..., ServerProcess],
) -> None:
    srv = make_server(workers=2, redis_url=None)  # embedded store started by the parent
    clients = [StreamClient(srv.ws_url, srv.admin_key, env="production") for _ in range(8)]
    await asyncio.gather(*(c.connect() for c in clients))
    started = time.monotonic()
    code = await asyncio.to_thread(srv.stop)
    assert code == 0
    assert time.monotonic() - started < 15
    for c in clients:
        assert await c.wait_closed(5) == 1001
