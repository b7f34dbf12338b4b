"""Three server processes share one Redis; one is SIGKILLed while changes are due.

Every scheduled change must be applied exactly once: no change lost with the
killed server (its leases expire and another server takes them over) and none
written twice (a takeover finds a write that was made but not recorded).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.builders import flag
from tests.support.polling import poll_blocking
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BASE = "/environments/production"
FLAGS = 8
STEPS = 3


def test_each_change_applied_exactly_once_when_a_server_dies(
    make_server: Callable[..., ServerProcess],
) -> None:
    env = {"FLAGWIRE_SCHEDULE_LEASE": "2"}
    servers = [make_server(env=env) for _ in range(3)]
    api = servers[0].api
    for i in range(FLAGS):
        api("POST", f"{BASE}/flags", flag(f"f{i}"))
    first_due = time.time() + 3.0
    ids: dict[str, str] = {}
    for step in range(STEPS):
        for i in range(FLAGS):
            rec = servers[i % 3].api(
                "POST",
                f"{BASE}/schedule",
                {
                    "flag": f"f{i}",
                    "change": {"name": f"step{step}"},
                    "due_at": first_due + 0.4 * step,
                    "if_changed": "apply",
                    "wait": 0.5,
                },
            )
            ids[rec["id"]] = f"f{i}"
    time.sleep(max(0.0, first_due - time.time()) + 0.005)
    servers[1].kill()  # while the first batch is being executed

    def finished() -> list[dict[str, Any]] | None:
        changes: list[dict[str, Any]] = api("GET", f"{BASE}/schedule")["changes"]
        done = [c for c in changes if c["status"] not in ("pending", "running")]
        return changes if len(done) == len(ids) else None

    changes = poll_blocking(finished, within=30, what="every scheduled change to finish")
    assert {c["status"] for c in changes} == {"applied"}, [
        (c["id"], c["status"], c.get("reason")) for c in changes if c["status"] != "applied"
    ]
    by_flag: dict[str, list[str]] = collections.defaultdict(list)
    for i in range(FLAGS):
        hist = api("GET", f"{BASE}/flags/f{i}/history")["versions"]
        by_flag[f"f{i}"] = [str(v.get("updated_by", "")) for v in hist]
        assert hist[0]["version"] == 1 + STEPS  # one write per change, no more
    for change_id, key in ids.items():
        writers = [w for w in by_flag[key] if w.endswith(f"({change_id})")]
        assert len(writers) == 1, (change_id, by_flag[key])
    executed = collections.Counter(c["executed_by"] for c in changes)
    assert sum(executed.values()) == len(ids)
    assert len(executed) >= 2  # the survivors shared the work
