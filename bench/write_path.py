"""Write path: admin writes per second on one server process, and their latency.

    python -m bench.write_path                    # 10 s sequential, 10 s with 16 in flight
    python -m bench.write_path --seconds 5 --concurrency 1,4,16 --clients 1000

Each write is ``PATCH /api/v1/environments/bench/flags/<key>`` flipping ``on``
(one Lua script in Redis: version check, INCR, HSET, XADD change, LPUSH
history, XADD audit) over 20 flags, from keep-alive HTTP/1.1 connections.
With ``--clients N`` that many stream clients are connected too, so every
write is also broadcast and acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._harness import (
    RESULTS,
    Admin,
    bench_flag,
    cpus,
    print_table,
    summary_ms,
    write_result,
)
from bench._processes import FlagwireServer, redis_server
from bench._swarm import Swarm

ENV = "bench"
FLAGS = [f"bench-write-{i:02d}" for i in range(20)]


async def load(base: str, key: str, concurrency: int, seconds: float) -> dict[str, Any]:
    lat: list[int] = []
    errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base + "/api/v1",
        headers={"Authorization": f"Bearer {key}"},
        limits=limits,
        timeout=30,
    ) as http:

        async def writer(i: int) -> None:
            nonlocal errors
            on = False
            n = 0
            while time.monotonic() < stop:
                flag = FLAGS[(i + n) % len(FLAGS)]
                n += 1
                on = not on
                t0 = time.monotonic_ns()
                r = await http.patch(f"/environments/{ENV}/flags/{flag}", json={"on": on})
                if r.status_code >= 400:
                    errors += 1
                    continue
                lat.append(time.monotonic_ns() - t0)

        t = time.monotonic()
        await asyncio.gather(*(writer(i) for i in range(concurrency)))
        elapsed = time.monotonic() - t
    return {
        "concurrency": concurrency,
        "writes": len(lat),
        "errors": errors,
        "writes_per_s": round(len(lat) / elapsed, 1),
        **summary_ms(lat),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--clients", type=int, default=0, help="stream clients connected meanwhile")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--name", default="write_path")
    a = ap.parse_args(argv)
    rows = []
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus)) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        for key in FLAGS:
            admin.put_flag(ENV, bench_flag(key))
        swarm = None
        if a.clients:
            swarm = Swarm(
                f"ws://127.0.0.1:{server.port}/api/v1/stream",
                a.clients,
                processes=1,
                cpus=cpus(a.client_cpus),
                headers={"Authorization": f"Bearer {admin.sdk_key(ENV)}"},
                lean=True,
            )
            swarm.connect()
        try:
            for conc in [int(c) for c in a.concurrency.split(",")]:
                r = asyncio.run(load(server.url, server.admin_key, conc, a.seconds))
                rows.append(r)
                print(
                    f"  concurrency {conc:3}: {r['writes_per_s']:8.1f} writes/s  "
                    f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms",
                    flush=True,
                )
        finally:
            if swarm is not None:
                swarm.close()
            admin.close()
    print()
    print_table(
        ["in flight", "writes/s", "p50 ms", "p99 ms", "max ms", "errors"],
        [
            [
                r["concurrency"],
                r["writes_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["errors"],
            ]
            for r in rows
        ],
    )
    chart(rows, RESULTS / f"{a.name}.png")
    path = write_result(
        a.name,
        {"seconds": a.seconds, "stream_clients": a.clients, "rows": rows, "chart": f"{a.name}.png"},
    )
    print(f"\nwrote {path}")
    return 0


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [str(r["concurrency"]) for r in rows]
    ax.bar(xs, [r["writes_per_s"] for r in rows], color="#37a")
    ax.set_xlabel("writes in flight")
    ax.set_ylabel("admin writes / s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["p99_ms"] for r in rows], color="#c33", marker="o")
    ax2.set_ylabel("p99 latency (ms)", color="#c33")
    ax.set_title("flagwire admin write path, one server process", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
