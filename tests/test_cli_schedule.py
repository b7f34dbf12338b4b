"""``flagwire schedule``: add, list, edit, cancel against a live server, and the change runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.builders import flag
from tests.support.cli import run_cli
from tests.support.polling import poll_blocking
from tests.test_admin_support import Live, live_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


def run(live: Live, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``flagwire ARGS`` in this process (tests/support/cli.py) against ``live``."""
    return run_cli(live.url, live.admin_key, *args, ok=ok)


def run_json(live: Live, *args: str) -> Any:
    return json.loads(run(live, *args, "--json").stdout)


def test_schedule_commands(live: Live) -> None:
    env = f"s{int(time.time() * 1000) % 10**8}"
    run(live, "envs", "create", env)
    assert live.api.post(f"/environments/{env}/flags", json=flag("banner", on=True)).is_success
    soon = str(time.time() + 1.0)
    rec = run_json(
        live, "schedule", "add", "banner", "--at", soon, "--patch", '{"on": false}', "--env", env
    )
    assert rec["status"] == "pending"
    later = run_json(
        live,
        "schedule",
        "add",
        "banner",
        "--at",
        "2031-01-01T00:00:00Z",
        "--restore",
        "1",
        "--env",
        env,
    )
    edited = run_json(live, "schedule", "edit", later["id"], "--if-changed", "skip", "--env", env)
    assert edited["if_changed"] == "skip"
    assert "cancelled" in run(live, "schedule", "cancel", later["id"], "--env", env).stdout

    def applied() -> bool:
        got = json.loads(run(live, "schedule", "show", rec["id"], "--env", env).stdout)
        return bool(got["status"] == "applied")

    poll_blocking(applied, within=15, what="the scheduled patch to run")
    listing = run(live, "schedule", "list", "--env", env).stdout
    assert rec["id"] in listing
    assert "applied" in listing
    assert "cancelled" in listing
    assert live.api.get(f"/environments/{env}/flags/banner").json()["on"] is False
    bad = run(live, "schedule", "add", "banner", "--at", soon, "--env", env, ok=False)
    assert bad.returncode != 0
    assert "exactly one of" in bad.stderr
    bad = run(
        live, "schedule", "add", "nope", "--at", soon, "--patch", "{}", "--env", env, ok=False
    )
    assert bad.returncode != 0
    assert "404" in bad.stderr or "does not exist" in bad.stderr


def test_release_commands(live: Live, tmp_path: Any) -> None:
    env = f"r{int(time.time() * 1000) % 10**8}"
    run(live, "envs", "create", env)
    assert live.api.post(
        f"/environments/{env}/flags",
        json=flag("checkout", variations=["new", "old"], fallthrough=1),
    ).is_success
    stages = tmp_path / "stages.yaml"
    stages.write_text(
        "- {percent: 10, hold: 3600, guards: [{event: latency-ms, stat: mean, action: pause}]}\n"
        "- {percent: 100}\n"
    )
    guards = tmp_path / "guards.json"
    guards.write_text('[{"event": "error", "name": "errors", "min_samples": 500}]')
    started = run_json(
        live,
        "release",
        "start",
        "checkout",
        "--stages",
        str(stages),
        "--guards",
        str(guards),
        "--env",
        env,
    )
    assert started["stage"] == 0
    assert started["guards"][0]["min_samples"] == 500
    out = run(live, "release", "status", "checkout", "--env", env).stdout
    assert "> 1. 10%: 10%, hold 3600 s" in out
    assert "guard errors: rate of error (z-test), min 500, then rollback" in out
    assert "guard latency-ms mean: mean of latency-ms (Welch), min 1000, then pause" in out
    assert run_json(live, "release", "pause", "checkout", "--env", env)["status"] == "paused"
    assert run_json(live, "release", "resume", "checkout", "--env", env)["status"] == "running"
    rolled = run_json(live, "release", "rollback", "checkout", "--env", env)
    assert rolled["status"] == "rolled_back"
    doc = live.api.get(f"/environments/{env}/flags/checkout").json()
    assert doc["fallthrough"] == {"variation": 1}
    bad = run(live, "release", "pause", "checkout", "--env", env, ok=False)
    assert bad.returncode != 0
    assert "no active release plan" in bad.stderr
    bad = run(
        live, "release", "start", "checkout", "--template", "standard", "--env", env, ok=False
    )
    assert bad.returncode != 0
    assert "staff" in bad.stderr  # the standard template needs a staff segment
