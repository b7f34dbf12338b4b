"""Release guards: time from a client-event guard's detection to every client applying the rollback.

    python -m bench.release_guard                 # 5 trials, 20 clients, one server
    python -m bench.release_guard --trials 3 --clients 50
    python -m bench.release_guard --servers 2      # clients spread over two servers

Starts a private Redis and ``--servers`` ``flagwire serve`` processes (insight
flushed every 0.2 s; the clients are spread over them, round robin),
then per trial: a flag at the old variation, ``--clients`` real
``FlagClient``s (reporting every 0.2 s) evaluating 200 contexts in a loop and
calling ``track("error")`` for one request in 5 served the new variation and
one in 50 served the old one, and a plan at 50% with an event guard
(``min_samples`` 300).  It reads the rollback event's ``detected_ms`` and
notes, in each client's ``on_change`` callback, when that client serves the
old variation to every context again (the server and clients share the
machine's clock).  Reported: per trial the slowest client, and over all
clients of all trials the median, p99 and max; the server's own figure
("applied by N of M in X ms"); and how long from the plan's start to the
detection (which is bounded by the report and flush intervals, not by the
guard).  Bounded: about 10 s per trial.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Admin, pct, print_table, write_result
from bench._processes import FlagwireServer, redis_server
from flagwire import FlagClient

ENV = "bench"
CONTEXTS = [{"key": f"user-{i}"} for i in range(200)]


async def trial(
    urls: list[str], admin: Admin, sdk: str, n_clients: int, key: str
) -> dict[str, Any]:
    admin.put_flag(
        ENV,
        {
            "key": key,
            "on": True,
            "variations": ["new", "old"],
            "off_variation": 1,
            "fallthrough": {"variation": 1},
        },
    )
    clients = [
        FlagClient(urls[i % len(urls)], sdk, app="bench", report_interval=0.2)
        for i in range(n_clients)
    ]
    await asyncio.gather(*(c.start(timeout=20) for c in clients))
    back: dict[int, float] = {}
    everyone_back = asyncio.Event()

    def note(i: int, c: FlagClient) -> None:
        def on_change(_change: object) -> None:
            if all(c.variation(key, ctx, None) == "old" for ctx in CONTEXTS):
                back.setdefault(i, time.time())
                if len(back) == n_clients:
                    everyone_back.set()
            else:
                back.pop(i, None)

        c.on_change(on_change, key)

    for i, c in enumerate(clients):
        note(i, c)
    stop = asyncio.Event()

    async def application(c: FlagClient) -> None:
        n = 0
        while not stop.is_set():
            for ctx in CONTEXTS:
                n += 1
                value = c.variation(key, ctx, "old")
                if n % (5 if value == "new" else 50) == 0:
                    c.track("error", ctx)
            await asyncio.sleep(0.02)

    apps = [asyncio.create_task(application(c)) for c in clients]
    guard = {"event": "error", "min_samples": 300, "name": "errors"}
    body = {
        "flag": key,
        "variation": 0,
        "stages": [{"percent": 50, "hold": 3600, "guards": [guard]}, {"percent": 100}],
    }
    started = time.time()
    plan = await asyncio.to_thread(
        lambda: admin._ok(admin.http.post(f"/environments/{ENV}/releases", json=body))
    )
    try:
        deadline = time.time() + 60
        path = f"/environments/{ENV}/releases/{plan['id']}"
        while time.time() < deadline:
            plan = await asyncio.to_thread(lambda: admin._ok(admin.http.get(path)))
            if plan["status"] == "rolled_back":
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the guard did not roll the plan back within 60 s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone_back.wait(), 10)
    finally:
        stop.set()
        await asyncio.gather(*apps)
        await asyncio.gather(*(c.close() for c in clients))
    event = plan["events"][-1]
    detected = int(event["detected_ms"])
    applied = [round(t * 1000 - detected, 1) for t in back.values()]
    return {
        "clients": n_clients,
        "applied": len(applied),
        "detection_to_client_ms": sorted(applied),
        "slowest_ms": max(applied) if applied else None,
        "start_to_detection_s": round(detected / 1000 - started, 2),
        "server_summary": event.get("summary"),
        "server_detection_to_applied_ms": event.get("detection_to_applied_ms"),
        "reason": plan.get("reason"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--servers", type=int, default=1)
    ap.add_argument("--name", default=None, help="result file (release_guard[-Nservers])")
    a = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with redis_server() as redis:
        key = "fw_admin_bench_guard"
        servers: list[FlagwireServer] = []
        try:
            first = FlagwireServer(redis.url, admin_key=key, env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"})
            servers.append(first.start())
            admin = Admin(first.url, key)
            admin.ensure_env(ENV)
            sdk = admin.sdk_key(ENV)
            for _ in range(a.servers - 1):  # started after the key: they load it at start
                more = FlagwireServer(
                    redis.url, admin_key=key, env={"FLAGWIRE_INSIGHT_FLUSH": "0.2"}
                )
                servers.append(more.start())
            urls = [s.url for s in servers]
            trials = [
                asyncio.run(trial(urls, admin, sdk, a.clients, f"guarded-{n}"))
                for n in range(a.trials)
            ]
            admin.close()
        finally:
            for s in servers:
                s.stop()
    every = [x for t in trials for x in t["detection_to_client_ms"]]
    slowest = [t["slowest_ms"] for t in trials if t["slowest_ms"] is not None]
    row = {
        "servers": a.servers,
        "trials": a.trials,
        "clients": a.clients,
        "all_applied": all(t["applied"] == t["clients"] for t in trials),
        "client_p50_ms": pct(every, 50),
        "client_p99_ms": pct(every, 99),
        "client_max_ms": max(every) if every else None,
        "slowest_client_median_ms": statistics.median(slowest) if slowest else None,
        "start_to_detection_median_s": statistics.median(t["start_to_detection_s"] for t in trials),
        "load_1m_before": round(load, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
    }
    print_table(
        ["servers", "trials", "clients", "all applied", "p50 ms", "p99 ms", "max ms", "detect s"],
        [
            [
                row["servers"],
                row["trials"],
                row["clients"],
                row["all_applied"],
                row["client_p50_ms"],
                row["client_p99_ms"],
                row["client_max_ms"],
                row["start_to_detection_median_s"],
            ]
        ],
    )
    name = a.name or ("release_guard" if a.servers == 1 else f"release_guard-{a.servers}servers")
    path = write_result(name, {"result": row, "trials": trials})
    print(f"\nwritten to {path}")
    return 0 if row["all_applied"] else 1


if __name__ == "__main__":
    sys.exit(main())
