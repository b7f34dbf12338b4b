"""Scheduled changes: lateness, the delay from a change's due time to its write.

    python -m bench.schedule_lateness                     # 3 servers, 300 changes over 20 s
    python -m bench.schedule_lateness --servers 1 --changes 100 --seconds 10

Starts a private Redis and N ``flagwire serve`` processes on it (all running
the scheduler, as a fleet does), schedules changes to 20 flags at random due
times spread over ``--seconds`` plus one burst of 20 changes due at the same
millisecond, and reads back each change's ``lateness_ms`` as recorded by the
server that executed it: the time its write finished minus its due time (the
servers share the machine's clock).  Bounded: about ``--seconds`` + 10 s.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Admin, bench_flag, pct, print_table, write_result
from bench._processes import FlagwireServer, redis_server

ENV = "bench"
FLAGS = [f"bench-sched-{i:02d}" for i in range(20)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--name", default="schedule_lateness")
    a = ap.parse_args(argv)
    rng = random.Random(13)
    with redis_server() as redis:
        key = "fw_admin_bench_sched"
        servers = [FlagwireServer(redis.url, admin_key=key).start() for _ in range(a.servers)]
        try:
            admin = Admin(servers[0].url, key)
            admin.ensure_env(ENV)
            for flag in FLAGS:
                admin.put_flag(ENV, bench_flag(flag))
            start = time.time() + 3.0
            dues = [start + rng.uniform(0, a.seconds) for _ in range(a.changes)]
            burst = start + a.seconds / 2
            dues += [burst] * len(FLAGS)
            for n, due in enumerate(dues):
                flag = FLAGS[n % len(FLAGS)]
                body = {
                    "flag": flag,
                    "change": {"description": f"change {n}"},
                    "due_at": due,
                    "if_changed": "apply",
                    "wait": 0,
                }
                admin._ok(admin.http.post(f"/environments/{ENV}/schedule", json=body))
            deadline = time.time() + a.seconds + 30
            changes: list[dict[str, Any]] = []
            while time.time() < deadline:
                time.sleep(1.0)
                changes = admin._ok(admin.http.get(f"/environments/{ENV}/schedule"))["changes"]
                if all(c["status"] not in ("pending", "running") for c in changes):
                    break
            admin.close()
        finally:
            for s in servers:
                s.stop()
    statuses = collections.Counter(c["status"] for c in changes)
    late = [float(c["lateness_ms"]) for c in changes if c["status"] == "applied"]
    in_burst = [
        float(c["lateness_ms"])
        for c in changes
        if c["status"] == "applied" and abs(c["due_ms"] / 1000 - burst) < 0.001
    ]
    executed = collections.Counter(c.get("executed_by", "") for c in changes)
    row = {
        "servers": a.servers,
        "changes": len(dues),
        "statuses": dict(statuses),
        "p50_ms": pct(late, 50),
        "p99_ms": pct(late, 99),
        "max_ms": max(late) if late else None,
        "burst_of_20_p99_ms": pct(in_burst, 99),
        "per_server": sorted(executed.values()),
    }
    print_table(
        ["servers", "changes", "p50 ms", "p99 ms", "max ms", "burst p99 ms", "per server"],
        [
            [
                row["servers"],
                row["changes"],
                row["p50_ms"],
                row["p99_ms"],
                row["max_ms"],
                row["burst_of_20_p99_ms"],
                row["per_server"],
            ]
        ],
    )
    path = write_result(a.name, {"result": row, "lateness_ms": sorted(late)})
    print(f"\nwritten to {path}")
    return 0 if set(statuses) == {"applied"} else 1


if __name__ == "__main__":
    sys.exit(main())
