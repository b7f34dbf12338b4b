"""Restarts: a kill switch after three server restarts reaches every real client within seconds.

    python -m bench.restarts                   # 1,000 clients, three restarts, the figure
    python -m bench.restarts --clients 200     # a quicker run

Issue 10, item 1.  ``--clients`` real :class:`flagwire.FlagClient` instances
(the library with its default reconnect policy, not the swarm's lean clients:
the policy is what is measured) in ``--processes`` worker processes, against
one ``flagwire serve`` process on a private Redis.

1. Every client connects and is READY.
2. The server is restarted three times (SIGTERM: streams close with 1001,
   connections are refused while it is down; ``--gap`` seconds between one
   restart's readiness and the next stop): three restarts within ~30 s.
3. Right after the last restart is ready (``/readyz`` answered 200), the flag
   is switched off through the admin API.
4. Reported: for each restart, when each client was READY again, counted from
   that restart's readiness; and for the kill switch, when each client had it,
   counted from readiness (the target: every client within 3 s) and from the
   write.

Clock: ``time.monotonic_ns()`` in every process (CLOCK_MONOTONIC is one clock
for the machine).  Readiness is the moment the coordinator saw ``/readyz``
answer 200, polled every 20 ms: the server was ready up to that much earlier,
so the figures can be up to ~20 ms kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench._harness import (
    Admin,
    bench_flag,
    cpus,
    pct,
    print_table,
    write_result,
)
from bench._processes import FlagwireServer, redis_server
from bench._storm import Sampler, restart_timed

ENV = "bench"
FLAG = "kill-switch"
TARGET_S = 3.0


# --- worker process: real FlagClients --------------------------------------------------


def _worker(conn: Connection, url: str, sdk: str, n: int, cpu_set: set[int] | None) -> None:
    if cpu_set:
        import os

        os.sched_setaffinity(0, cpu_set)
    asyncio.run(_work(conn, url, sdk, n))


async def _work(conn: Connection, url: str, sdk: str, n: int) -> None:
    from flagwire import ClientStatus, FlagClient

    clients = [FlagClient(url, sdk, start_timeout=60) for _ in range(n)]
    changes: list[list[tuple[int | None, int]]] = [[] for _ in range(n)]
    statuses: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    knocks: list[list[int]] = [[] for _ in range(n)]
    for i, c in enumerate(clients):
        c.on_change(
            lambda ch, i=i: changes[i].append((ch.new_version, time.monotonic_ns())), key=FLAG
        )
        c.on_status(lambda s, i=i: statuses[i].append((str(s), time.monotonic_ns())))
        # when the attempt that brought it back began (the server saw it knock)
        c.on_status(
            lambda s, c=c, i=i: (
                knocks[i].append(int(c._subscription.attempt_started * 1e9))
                if s is ClientStatus.READY and c._subscription is not None
                else None
            )
        )
    failures: dict[str, int] = {}  # what the clients were told, by kind

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "reconnecting in" in msg:
                why = msg.removeprefix("flagwire: ").split(";")[0].split(": ")[0][:80]
                failures[why] = failures.get(why, 0) + 1

    log = logging.getLogger("flagwire")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(Count())
    for i in range(0, n, 50):  # connect in batches, as a fleet would
        await asyncio.gather(*(c.start() for c in clients[i : i + 50]))
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "ready":
            conn.send(sum(1 for c in clients if c.status is ClientStatus.READY))
        elif isinstance(cmd, tuple) and cmd[0] == "has":
            conn.send(sum(1 for ch in changes if any((v or 0) >= cmd[1] for v, _ in ch)))
        elif cmd == "report":
            conn.send(
                {
                    "changes": changes,
                    "statuses": statuses,
                    "knocks": knocks,
                    "attempts": sum(c.stats["attempts"] for c in clients),
                    "connections": sum(c.stats["connections"] for c in clients),
                    "snapshots": sum(c.stats["snapshots"] for c in clients),
                    "failures": failures,
                }
            )
        else:
            await asyncio.gather(*(c.close() for c in clients))
            conn.send("closed")
            return


class Fleet:
    """``processes`` worker processes holding ``n`` FlagClients between them."""

    def __init__(
        self, url: str, sdk: str, n: int, processes: int, cpu_set: set[int] | None
    ) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        per = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
        for k in per:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(theirs, url, sdk, k, cpu_set), daemon=True)
            p.start()
            self.pipes.append(mine)
            self.procs.append(p)

    def ask(self, cmd: Any) -> list[Any]:
        for p in self.pipes:
            p.send(cmd)
        return [p.recv() for p in self.pipes]

    def wait(self, cmd: Any, want: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            got = sum(self.ask(cmd))
            if got >= want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("close")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# --- coordinator -------------------------------------------------------------------------


def _merge(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _summary(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {}
    return {
        "p50": round(pct(values_s, 50), 3),
        "p90": round(pct(values_s, 90), 3),
        "p99": round(pct(values_s, 99), 3),
        "max": round(max(values_s), 3),
        "min": round(min(values_s), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=0, help="default: one per 250 clients")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--gap", type=float, default=3.0, help="seconds between restarts")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--name", default="restarts")
    a = ap.parse_args(argv)
    n = a.clients
    procs = a.processes or max(1, math.ceil(n / 250))
    out: dict[str, Any] = {"clients": n, "processes": procs, "gap_s": a.gap}
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus)) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        admin.put_flag(ENV, {**bench_flag(FLAG), "on": True})
        sdk = admin.sdk_key(ENV)
        fleet = Fleet(server.url, sdk, n, procs, cpus(a.client_cpus))
        try:
            t0 = time.monotonic()
            got = fleet.wait("ready", n, timeout=120)
            out["connect_s"] = round(time.monotonic() - t0, 2)
            print(f"{got}/{n} clients READY in {out['connect_s']} s")
            if got < n:
                raise RuntimeError(f"only {got}/{n} clients became READY")
            restarts: list[tuple[int, int]] = []
            pids = [p.pid for p in fleet.procs]
            with Sampler(lambda: server.proc.pid if server.proc else None, pids) as sampler:
                for i in range(a.restarts):
                    if i:
                        time.sleep(a.gap)
                    restarts.append(restart_timed(server))
                    down = (restarts[-1][1] - restarts[-1][0]) / 1e9
                    print(f"restart {i + 1}: down {down:.2f} s")
                t_write = time.monotonic_ns()
                resp = admin.patch_flag(ENV, FLAG, {"on": False})
                t_written = time.monotonic_ns()
                version = int(resp["version"])
                have = fleet.wait(("has", version), n, timeout=60)
                t_have = time.monotonic_ns()
                time.sleep(0.1)
            # which side was busy from the last readiness until every client had the change
            out["after_last_readiness"] = sampler.between(restarts[-1][1], t_have)
            reports = fleet.ask("report")
        finally:
            fleet.close()
        admin.close()

    # when each client was READY again after each restart
    per_restart = []
    statuses = [s for r in reports for s in r["statuses"]]
    changes = [c for r in reports for c in r["changes"]]
    knocks = [k for r in reports for k in r["knocks"]]
    for i, (t_stop, t_ready) in enumerate(restarts):
        t_next = restarts[i + 1][0] if i + 1 < len(restarts) else sys.maxsize
        back, knocked = [], []
        for st, kn in zip(statuses, knocks, strict=True):
            times = [t for s, t in st if s == "READY" and t_stop < t <= t_next]
            if times:
                back.append((times[0] - t_ready) / 1e9)
            began = [t for t in kn if t_stop < t <= t_next]
            if began:
                knocked.append((began[0] - t_ready) / 1e9)
        per_restart.append(
            {
                "down_s": round((t_ready - t_stop) / 1e9, 3),
                "ready_again": len(back),
                "ready_after_readiness_s": _summary(back),
                "successful_attempt_began_after_readiness_s": _summary(knocked),
            }
        )
    arrived = []
    after_write = []
    for ch in changes:
        times = [t for v, t in ch if (v or 0) >= version]
        if times:
            arrived.append((times[0] - restarts[-1][1]) / 1e9)
            after_write.append((times[0] - t_write) / 1e9)
    first, last = restarts[0][0], restarts[-1][1]
    out.update(
        {
            "restarts": per_restart,
            "restarts_within_s": round((last - first) / 1e9, 2),
            "write_s": round((t_written - t_write) / 1e9, 3),
            "kill_switch": {
                "clients_with_it": have,
                "after_readiness_s": _summary(arrived),
                "after_write_s": _summary(after_write),
            },
            "attempts": sum(r["attempts"] for r in reports),
            "connections": sum(r["connections"] for r in reports),
            "snapshots": sum(r["snapshots"] for r in reports),
            "failures_seen": _merge([r["failures"] for r in reports]),
            "target_s": TARGET_S,
        }
    )
    k = out["kill_switch"]
    rows: list[list[Any]] = [
        ["clients", n, ""],
        ["three restarts within (s)", out["restarts_within_s"], "~30"],
    ]
    for i, r in enumerate(per_restart):
        s = r["ready_after_readiness_s"]
        rows.append(
            [
                f"restart {i + 1}: down (s) / READY again / p99, max after ready (s)",
                f"{r['down_s']} / {r['ready_again']} / {s.get('p99')}, {s.get('max')}",
                "",
            ]
        )
    rows += [
        ["kill switch: clients with it", f"{have}/{n}", f"{n}/{n}"],
        ["kill switch: p50 after readiness (s)", k["after_readiness_s"].get("p50"), ""],
        ["kill switch: p99 after readiness (s)", k["after_readiness_s"].get("p99"), ""],
        [
            "kill switch: max after readiness (s)",
            k["after_readiness_s"].get("max"),
            f"<= {TARGET_S}",
        ],
        ["kill switch: max after the write (s)", k["after_write_s"].get("max"), ""],
        ["connection attempts (all clients)", out["attempts"], ""],
        [
            "after the last readiness: server CPU / run-queue wait (s)",
            f"{out['after_last_readiness'].get('server_cpu_s')} / "
            f"{out['after_last_readiness'].get('server_waiting_s')}",
            "",
        ],
        [
            "after the last readiness: clients CPU / run-queue wait (s)",
            f"{out['after_last_readiness'].get('clients_cpu_s')} / "
            f"{out['after_last_readiness'].get('clients_waiting_s')}",
            "",
        ],
    ]
    print()
    print_table(["figure", "value", "target"], rows)
    worst = k["after_readiness_s"].get("max")
    met = have == n and worst is not None and worst <= TARGET_S
    out["verdicts"] = [
        f"kill switch after {a.restarts} restarts: {have}/{n} clients, the last "
        f"{worst} s after readiness: {'meets' if met else 'MISSES'} the {TARGET_S} s target"
    ]
    print("what the clients were told when a connection ended or failed:")
    for why, count in out["failures_seen"].items():
        print(f"  {count:6d}  {why}")
    for v in out["verdicts"]:
        print(v)
    path = write_result(a.name, out)
    print(f"\nwrote {path}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
