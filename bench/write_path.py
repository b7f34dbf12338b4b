"""Write path: admin writes per second on one server process, and their latency.

    python -m bench.write_path                    # 10 s sequential, 10 s with 16 in flight
    python -m bench.write_path --seconds 5 --concurrency 1,4,16 --clients 1000

Each write is ``PATCH /api/v1/environments/bench/flags/<key>`` flipping that flag's ``on``
(one Lua script in Redis: version check, INCR, HSET, XADD change, LPUSH
history, XADD audit) over 32 flags (no two in flight on one flag), from raw keep-alive HTTP/1.1
sockets (the load generator's CPU share is reported beside the figures).  Every answer must
say ``"changed":true``: a patch that changes nothing writes nothing, so it is counted as an
error, not as a write.
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

import psutil

from bench._cpuprofile import ProfiledServer, summarize_cpu_profile
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
from bench._profile import start_profile, stop_profile, summarize_profile
from bench._swarm import Swarm

ENV = "bench"
# 32 flags, and each writer keeps to its own ones: writes in flight never share a flag.
FLAGS = [f"bench-write-{i:02d}" for i in range(32)]


async def load(
    base: str, key: str, concurrency: int, seconds: float, state: dict[str, bool] | None = None
) -> dict[str, Any]:
    """Writers on raw keep-alive HTTP/1.1 sockets, one request in flight on each.

    Why not httpx: its pool cost more CPU per request than the server's handler, so
    the figure measured the load generator (the issue's first table); a request
    here is one prebuilt byte string and a header scan.

    ``state`` is each flag's ``on`` as stored (all on, as ``bench_flag`` makes them),
    updated as the writes land.  Why per flag: a writer that alternated ``on`` by its
    own count sent each flag the same value every time (32 flags, an even stride),
    so after the first round every patch was a no-op that wrote nothing.
    """
    on_of = state if state is not None else dict.fromkeys(FLAGS, True)
    lat: list[int] = []
    errors = 0
    stop = time.monotonic() + seconds
    host, port = base.removeprefix("http://").split(":")

    async def writer(i: int) -> None:
        nonlocal errors
        reader, w = await asyncio.open_connection(host, int(port))
        n = 0
        try:
            while time.monotonic() < stop:
                flag = FLAGS[(i + n * concurrency) % len(FLAGS)]
                n += 1
                on = on_of[flag] = not on_of[flag]
                body = b'{"on":true}' if on else b'{"on":false}'
                req = (
                    f"PATCH /api/v1/environments/{ENV}/flags/{flag} HTTP/1.1\r\n"
                    f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                t0 = time.monotonic_ns()
                w.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                answer = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 2"):
                    on_of[flag] = not on  # refused: the flag keeps its value
                    errors += 1
                    continue
                if b'"changed":true' not in answer:
                    errors += 1
                    continue
                lat.append(time.monotonic_ns() - t0)
        finally:
            w.close()

    t = time.monotonic()
    cpu0 = time.process_time()
    await asyncio.gather(*(writer(i) for i in range(concurrency)))
    elapsed = time.monotonic() - t
    cpu = time.process_time() - cpu0
    return {
        "concurrency": concurrency,
        "writes": len(lat),
        "errors": errors,
        "writes_per_s": round(len(lat) / elapsed, 1),
        # The load generator's own CPU share: near 1.0 means it, not the server, is the limit.
        "loadgen_cpu_share": round(cpu / elapsed, 2),
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
    ap.add_argument(
        "--redis-cpus", default=None, help="CPUs for Redis (default: the clients' CPUs)"
    )
    ap.add_argument("--name", default="write_path")
    ap.add_argument("--profile", action="store_true", help="py-spy the server for each run")
    ap.add_argument(
        "--cpu-profile",
        action="store_true",
        help="cProfile the server by its CPU time for each run (slows it: figures marked)",
    )
    a = ap.parse_args(argv)
    rows = []
    stats = RESULTS / f"{a.name}.cpuprofile"
    with (
        redis_server(cpus(a.client_cpus if a.redis_cpus is None else a.redis_cpus)) as redis,
        (
            ProfiledServer(redis.url, stats, cpu_set=cpus(a.server_cpus))
            if a.cpu_profile
            else FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus))
        ) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        for key in FLAGS:
            admin.put_flag(ENV, bench_flag(key))
        state = dict.fromkeys(FLAGS, True)
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
                prof = RESULTS / f"{a.name}-profile-c{conc}.speedscope.json"
                spy = start_profile(server.pid, prof) if a.profile else None
                if isinstance(server, ProfiledServer):
                    server.begin()
                before = psutil.Process(server.pid).cpu_times()
                try:
                    r = asyncio.run(load(server.url, server.admin_key, conc, a.seconds, state))
                finally:
                    stop_profile(spy)
                if isinstance(server, ProfiledServer):
                    r["cpu_profiled"] = True  # slowed by the profiler: not comparable
                    txt = summarize_cpu_profile(server.end(), writes=r["writes"])
                    (RESULTS / f"{a.name}-cpuprofile-c{conc}.txt").write_text(txt)
                    stats.unlink(missing_ok=True)
                after = psutil.Process(server.pid).cpu_times()
                used = (after.user - before.user) + (after.system - before.system)
                # Server CPU per write, from the kernel: what the load's shape cannot distort.
                r["server_cpu_ms_per_write"] = round(1000 * used / max(r["writes"], 1), 3)
                r["server_cpu_share"] = round(used / a.seconds, 2)
                if spy is not None:
                    txt = summarize_profile(prof)
                    prof.with_suffix("").with_suffix(".txt").write_text(txt)
                    prof.unlink(missing_ok=True)
                rows.append(r)
                print(
                    f"  concurrency {conc:3}: {r['writes_per_s']:8.1f} writes/s  "
                    f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                    f"load generator CPU {r['loadgen_cpu_share']:.0%}  "
                    f"server CPU {r['server_cpu_share']:.0%}, "
                    f"{r['server_cpu_ms_per_write']:.2f} ms/write",
                    flush=True,
                )
        finally:
            if swarm is not None:
                swarm.close()
            admin.close()
    print()
    print_table(
        [
            "in flight",
            "writes/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "loadgen CPU",
            "server CPU",
            "server ms/write",
        ],
        [
            [
                r["concurrency"],
                r["writes_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["errors"],
                r["loadgen_cpu_share"],
                r["server_cpu_share"],
                r["server_cpu_ms_per_write"],
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
