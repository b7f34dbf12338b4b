"""Handshakes: the server's CPU time per new stream, the figure that bounds a reconnect storm.

    python -m bench.handshakes                  # 2,000 clients, 5 rounds of reconnects
    python -m bench.handshakes --clients 5000 --rounds 3

Why CPU time: a reconnect storm at 10,000 clients on one process is bounded
by how much server CPU each handshake costs (``bench/capacity.py`` shows the
rest), and on a shared 2-core machine the wall-clock figure moves with
everyone else's load while the kernel's count of the server's user + system
time does not.

1. ``--clients`` lean protocol clients (``bench/_swarm.py``) connect to one
   ``flagwire serve`` (pinned to ``--server-cpus``) without ``since``: each
   handshake gets ``hello`` and the full snapshot.
2. ``--rounds`` times, every client drops its connection at once and redials
   after a random 0.05 to ``--spread`` s, resuming from its version (what a
   restart's storm does, minus the restart): each costs the server a close
   and a handshake with ``hello`` only.

Reported per round: server CPU ms per handshake, and the clients' CPU per
handshake beside it (their share of the work); medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Admin, bench_flag, cpus, print_table, write_result
from bench._processes import FlagwireServer, redis_server
from bench._profile import start_profile, stop_profile, summarize_profile
from bench._storm import cpu_seconds
from bench._swarm import Swarm

ENV = "bench"


def _wait_open(swarm: Swarm, n: int, reconnects: int, timeout: float = 120.0) -> dict[str, Any]:
    """Until all ``n`` are open again after at least ``reconnects`` redials in all."""
    deadline = time.monotonic() + timeout
    while True:
        st = swarm.stats()
        if st["open"] >= n and st["reconnects"] >= reconnects:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {st['open']}/{n} open again after {timeout}s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spread", type=float, default=1.0, help="redial jitter, seconds")
    ap.add_argument("--flags", type=int, default=20, help="flags in the snapshot")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--name", default="handshakes")
    ap.add_argument(
        "--profile", type=Path, default=None, help="py-spy the server over the reconnect rounds"
    )
    a = ap.parse_args(argv)
    n = a.clients
    out: dict[str, Any] = {"clients": n, "rounds": a.rounds, "spread_s": a.spread}
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus)) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        for i in range(a.flags):
            admin.put_flag(ENV, bench_flag(f"flag-{i}"))
        sdk = admin.sdk_key(ENV)
        admin.close()
        time.sleep(1.0)
        with Swarm(
            f"ws://127.0.0.1:{server.port}/api/v1/stream",
            n,
            processes=max(1, n // 5000 + (n % 5000 > 0)),
            cpus=cpus(a.client_cpus),
            headers={"Authorization": f"Bearer {sdk}"},
            reconnect=True,
            spread=a.spread,
            lean=True,
        ) as swarm:
            clients = [p.pid for p in swarm.procs]
            s0, c0 = cpu_seconds([server.pid], tree=True), cpu_seconds(clients)
            got = swarm.connect(concurrency=500)
            st = _wait_open(swarm, n, 0)
            s1, c1 = cpu_seconds([server.pid], tree=True), cpu_seconds(clients)
            out["snapshot_frame_bytes"] = st["frame_bytes"]
            fresh = {
                "connected": got["ok"],
                "server_ms_per_handshake": round((s1 - s0) * 1000 / n, 4),
                "clients_ms_per_handshake": round((c1 - c0) * 1000 / n, 4),
            }
            rounds = []
            prof = start_profile(server.pid, a.profile) if a.profile else None
            for r in range(a.rounds):
                time.sleep(0.5)
                before = swarm.stats()["reconnects"]
                s0, c0 = cpu_seconds([server.pid], tree=True), cpu_seconds(clients)
                t0 = time.monotonic()
                swarm.drop()
                _wait_open(swarm, n, before + n)
                wall = time.monotonic() - t0
                time.sleep(0.3)  # the server's side of the last closes
                s1, c1 = cpu_seconds([server.pid], tree=True), cpu_seconds(clients)
                rounds.append(
                    {
                        "server_ms_per_handshake": round((s1 - s0) * 1000 / n, 4),
                        "clients_ms_per_handshake": round((c1 - c0) * 1000 / n, 4),
                        "wall_s": round(wall, 3),
                    }
                )
                print(f"round {r + 1}: {rounds[-1]}")
            stop_profile(prof)
    med = {
        k: round(statistics.median(r[k] for r in rounds), 4)
        for k in ("server_ms_per_handshake", "clients_ms_per_handshake")
    }
    out.update({"fresh": fresh, "resume_rounds": rounds, "resume_median": med})
    print_table(
        ["figure", "value"],
        [
            ["clients", n],
            [
                "fresh connect (snapshot): server CPU ms / handshake",
                fresh["server_ms_per_handshake"],
            ],
            ["fresh connect: clients CPU ms / handshake", fresh["clients_ms_per_handshake"]],
            [
                "close + resume (hello only): server CPU ms, median",
                med["server_ms_per_handshake"],
            ],
            ["resume: clients CPU ms / handshake, median", med["clients_ms_per_handshake"]],
            ["10,000 at that cost, one core (s)", med["server_ms_per_handshake"] * 10],
        ],
    )
    if a.profile is not None and a.profile.exists():
        text = summarize_profile(a.profile)
        a.profile.with_suffix(".txt").write_text(text)
        print(text)
    path = write_result(a.name, out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
