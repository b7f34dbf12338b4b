"""Webhooks on a real three-master Redis Cluster (the helper of ``test_topologies.py``).

On a cluster one ``XREADGROUP`` cannot span environments (their keys are in
different slots), and the set of watched environments is in another slot than
any environment: creating a webhook, deliveries from several environments and
the last webhook's deletion must all work there too.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from flagwire_server.store.webhooks import CrossSlotRead
from tests.support.builders import flag
from tests.support.inprocess import asgi_app
from tests.support.polling import poll
from tests.support.receiver import receiver
from tests.test_topologies import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAST = {"FLAGWIRE_WEBHOOK_RETRY_BASE": "0.05", "FLAGWIRE_WEBHOOK_TIMEOUT": "2"}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c.start()
    finally:
        c.close()


async def test_webhooks_of_several_environments_on_a_cluster(cluster: Cluster) -> None:
    envs = ["production", "staging", "qa"]
    async with receiver() as rec, asgi_app(cluster.url, "fwc", env=FAST) as (app, http):
        ids = {}
        for env in envs:
            if env != "production":
                r = await http.post("/api/v1/environments", json={"key": env})
                assert r.status_code == 201, r.text
            r = await http.post(
                f"/api/v1/environments/{env}/webhooks",
                json={"url": rec.url, "events": ["flag.changed"]},
            )
            assert r.status_code == 201, r.text
            ids[env] = r.json()["webhook"]["id"]
        hooks = app.state.services.webhooks
        slots = {hooks.redis.keyslot(hooks.keyspace.webhooks(e)) for e in envs}
        assert len(slots) > 1, "the environments should be in different slots"
        # What makes the notifier read each environment on its own here.
        with pytest.raises(CrossSlotRead):
            await hooks.wait_any(envs, "probe", 1, 10)
        for env in envs:
            r = await http.post(f"/api/v1/environments/{env}/flags", json=flag(f"on-{env}"))
            assert r.status_code == 201, r.text
        await poll(lambda: len(rec.requests) >= 3, within=15, what="one delivery per env")
        got = sorted(
            (orjson.loads(q.body)["env"], orjson.loads(q.body)["data"]["key"]) for q in rec.requests
        )
        assert got == sorted((e, f"on-{e}") for e in envs)
        r = await http.delete(f"/api/v1/environments/qa/webhooks/{ids['qa']}")
        assert r.status_code == 200, r.text
        assert sorted(await hooks.envs()) == ["production", "staging"]
