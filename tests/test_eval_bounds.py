"""No input stalls a real server: RE2 patterns, refused ones named, hostile contexts cheap.

The incident (issue 10, item 3): a rule ``\\w+@example\\.com$`` on ``email`` and an
80,000-character email made ``POST /environments/{env}/evaluate`` take 39.6 s,
during which ``/healthz`` did not answer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from flagwire.core.limits import MAX_STRING_ATTRIBUTE
from tests.support.builders import clause, flag, rule
from tests.test_admin_support import Live, live_server

pytestmark = pytest.mark.timeout(90)

INCIDENT_PATTERN = r"\w+@example\.com$"


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


@pytest.fixture
def env(live: Live) -> str:
    name = f"e{uuid.uuid4().hex[:8]}"
    assert live.api.post("/environments", json={"key": name}).status_code == 201
    return name


def test_a_pattern_re2_cannot_run_is_refused_with_its_path(live: Live, env: str) -> None:
    base = f"/environments/{env}/flags"
    bad = flag("g", rules=[rule(clause("email", "matches", "ok$", "^(?=admin)"), variation=0)])
    r = live.api.post(base, json=bad)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    errors = r.json()["errors"]
    assert [e["path"] for e in errors] == ["rules[0].clauses[0].values[1]"]
    assert "RE2" in errors[0]["message"]
    assert "(?=" in errors[0]["message"]
    assert live.api.get(f"{base}/g").status_code == 404  # nothing stored
    # The same through a merge patch of an existing flag.
    assert live.api.post(base, json=flag("h")).status_code == 201
    patch = {"rules": [rule(clause("email", "matches", r"(a)\1"), variation=0)]}
    r = live.api.patch(f"{base}/h", json=patch)
    assert r.status_code == 422, r.text
    assert [e["path"] for e in r.json()["errors"]] == ["rules[0].clauses[0].values[0]"]


def test_a_hostile_context_does_not_stall_the_server(live: Live, env: str) -> None:
    doc = flag("f", rules=[rule(clause("email", "matches", INCIDENT_PATTERN), variation=0)])
    assert live.api.post(f"/environments/{env}/flags", json=doc).status_code == 201
    sdk_secret = live.api.post("/keys", json={"name": "app", "kind": "sdk", "env": env}).json()[
        "secret"
    ]
    sdk = httpx.Client(
        base_url=live.base, headers={"Authorization": f"Bearer {sdk_secret}"}, timeout=30
    )
    health = httpx.Client(base_url=live.url, timeout=30)
    evaluate = f"/environments/{env}/evaluate"
    try:
        r = sdk.post(
            evaluate, json={"context": {"key": "k", "email": "a@example.com"}, "flag": "f"}
        )
        assert (r.status_code, r.json()["reason"]) == (200, "RULE_MATCH")

        results: list[tuple[float, httpx.Response]] = []

        def hostile() -> None:
            for length in (80_000, MAX_STRING_ATTRIBUTE - len("@example.org")):
                context = {"key": "k", "email": "a" * length + "@example.org"}
                started = time.perf_counter()
                resp = sdk.post(evaluate, json={"context": context, "flag": "f"})
                results.append((time.perf_counter() - started, resp))

        worker = threading.Thread(target=hostile)
        worker.start()
        slowest_health = 0.0
        while worker.is_alive():
            started = time.perf_counter()
            assert health.get("/healthz").status_code == 200
            slowest_health = max(slowest_health, time.perf_counter() - started)
            time.sleep(0.005)
        worker.join()
        assert len(results) == 2
        for elapsed, resp in results:
            assert resp.status_code == 200, resp.text
            assert resp.json()["reason"] == "FALLTHROUGH"
            assert elapsed < 2.0, f"evaluate took {elapsed:.2f} s"
        assert slowest_health < 1.0, f"/healthz took {slowest_health:.2f} s"
    finally:
        sdk.close()
        health.close()
