"""Fleet insight at 10,000 clients: server CPU for their summaries, Redis memory per day.

Run ``python -m bench.insight`` (Redis on ``--redis``, default the local one;
keys under a random prefix, deleted at the end).  What it measures, and what
it does not:

* **CPU**: 10,000 clients reporting every 10 s are 1,000 summaries a second.
  For ``--seconds`` simulated seconds, the server-side path of each summary
  runs in this process as the endpoint runs it.  That path is the frame's
  ``decode`` (50 flags x 2 variations, evaluations by reason, a sketch of
  five contexts, one event) and :meth:`Insight.receive`.  Every 5 simulated
  seconds a real flush writes to Redis and refreshes the 10,000-entry SDK
  inventory.  The CPU time this takes, divided by the simulated time, is the
  share of one core the reports cost a server.  Not included: the WebSocket
  frame parsing of uvicorn (per byte, like any frame), measured elsewhere
  (``bench/results/propagation*``).
* **Redis memory per day**: one flag's day is written as the flushes would
  write it.  That is 1,440 minutes x 2 variations, reasons and events, and
  HyperLogLogs of ``--contexts`` distinct contexts per variation.  ``MEMORY
  USAGE`` of each key family, times 50 flags, gives the memory of one day, and
  with the retention (minute buckets 3 days, the rest 31) the steady state.

Writes ``bench/results/insight.json``.

``--sockets`` runs the same load over real sockets instead: ``--clients`` lean
WebSocket clients against a real ``flagwire serve`` (``bench/_insight_sockets.py``),
and adds its figures to ``insight.json`` under ``"sockets"`` (``--label``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import secrets
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / "client", ROOT / "server"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import redis.asyncio as aioredis  # noqa: E402

from flagwire.core.protocol import Identify, Summary, decode, encode  # noqa: E402
from flagwire.core.reports import VariationStats  # noqa: E402
from flagwire.core.sketch import Registers  # noqa: E402
from flagwire_server.config import Settings  # noqa: E402
from flagwire_server.observability.metrics import Metrics  # noqa: E402
from flagwire_server.store.insight import (  # noqa: E402
    DAY_MS,
    MINUTE_DAYS,
    FlagBatch,
    InsightStore,
    VariationBatch,
)
from flagwire_server.store.keyspace import Keyspace  # noqa: E402
from flagwire_server.stream.conn import Conn  # noqa: E402
from flagwire_server.stream.feed import EnvFeed  # noqa: E402
from flagwire_server.stream.reports import ConnReport, Insight  # noqa: E402

ENV = "bench"


def _sketch(keys: Iterable[str]) -> tuple[int, ...] | bytes:
    regs = Registers()
    for k in keys:
        regs.add_key(k)
    return regs.sketch()


def summaries(flags: list[str], n: int, rng: random.Random) -> list[bytes]:
    """``n`` distinct encoded summaries as 50-flag clients send them."""
    out = []
    for i in range(n):
        per: dict[str, dict[int, VariationStats]] = {}
        for key in flags:
            per[key] = {
                v: VariationStats(
                    {"FALLTHROUGH": rng.randint(1, 200), "RULE_MATCH": rng.randint(0, 20)},
                    _sketch(f"user-{rng.randrange(10**6)}" for _ in range(5)),
                    {"error": (rng.randint(0, 3), 0.0)} if v == 1 else {},
                )
                for v in (0, 1)
            }
        out.append(encode(Summary(i, i + 10_000, per)))
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"benchins{secrets.token_hex(4)}"
    redis = aioredis.Redis.from_url(args.redis)
    ks = Keyspace(prefix)
    store = InsightStore(redis, ks, retention_days=30)
    flags = [f"flag-{i:02d}" for i in range(args.flags)]
    feed = EnvFeed(ENV, settings=Settings(), metrics=Metrics(), on_acks=lambda: None)
    feed.mirror.load("e", 1, {k: {"key": k} for k in flags}, {})
    metrics = Metrics()
    insight = Insight(
        store, metrics, lambda: {ENV: feed}, instance_id="bench", flush_interval=5, max_series=1000
    )
    conns = []
    for i in range(args.clients):
        conn = Conn(f"k{i}", None)
        conn.insight = ConnReport(f"bench:{i}", Identify("flagwire-python", "1", f"app-{i % 20}"))
        conn.base = conn.acked = 1
        feed.mirror.conns.add(conn)
        conns.append(conn)
    rng = random.Random(7)
    frames = summaries(flags, 200, rng)
    print(f"summary frame: {len(frames[0]):,} bytes; {args.clients:,} clients every 10 s")
    rate = args.clients // 10  # summaries per second
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        receive_cpu = 0.0
        flush_cpu = 0.0
        for second in range(args.seconds):
            t = time.process_time()
            for j in range(rate):
                frame = frames[(second * rate + j) % len(frames)]
                msg = decode(frame, max_size=1 << 20)
                conn = conns[(second * rate + j) % len(conns)]
                conn.insight.tokens = 1e9  # type: ignore[union-attr]  # no rate limit here
                insight.receive(feed, conn, msg, len(frame))  # type: ignore[arg-type]
            receive_cpu += time.process_time() - t
            if second % 5 == 4:
                t = time.process_time()
                await insight.flush()
                flush_cpu += time.process_time() - t
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        share = cpu / args.seconds
        print(
            f"{args.seconds} s of reports: {cpu:.2f} s CPU ({wall:.2f} s wall): "
            f"{share:.1%} of one core (decode+receive {receive_cpu:.2f} s, "
            f"flushes {flush_cpu:.2f} s)"
        )

        # --- Redis memory of one flag's day, then x flags ----------------------
        day = time.time_ns() // 1_000_000 // DAY_MS  # today: the minute buckets must not expire
        batch = FlagBatch(
            last_ms=day * DAY_MS + DAY_MS - 1, apps={f"app-{i}": 1 for i in range(20)}
        )
        minute0 = day * DAY_MS // 60_000
        for v in (0, 1):
            vb = VariationBatch()
            vb.minutes = {minute0 + m: rng.randint(1000, 5000) for m in range(1440)}
            vb.reasons = {"FALLTHROUGH": 10**7, "RULE_MATCH": 10**5}
            vb.events = {"error": [1000, 0.0, 0.0], "latency-ms": [10**6, 4.2e7, 2.1e9]}
            batch.variations[v] = vb
        await store.write(ENV, {"probe": batch})
        for v in (0, 1):  # the HyperLogLogs, merged from sketches of 10,000 contexts
            batch = FlagBatch(last_ms=day * DAY_MS)
            for start in range(0, args.contexts, 10_000):
                vb = batch.variations[v] = VariationBatch()
                sketch = _sketch(f"u{i}" for i in range(start, min(args.contexts, start + 10_000)))
                if isinstance(sketch, bytes):
                    vb.dense.append(sketch)
                else:
                    vb.sparse += sketch
                await store.write(ENV, {"probe": batch})

        async def usage(suffix: str) -> int:
            return int(await redis.memory_usage(ks.insight(ENV, suffix), samples=0) or 0)

        minute = await usage(f"m:probe:{day}")
        hourly = await usage(f"h:probe:{day}")
        hll = sum([await usage(f"u:probe:{day}:{v}") for v in (0, 1)])
        apps_bytes = await usage("apps:probe")
        clients_bytes = await usage("clients") + await usage("seen")
        per_flag_day = minute + hourly + hll
        per_day = per_flag_day * args.flags
        steady = args.flags * (minute * (MINUTE_DAYS + 1) + (hourly + hll) * 31 + apps_bytes)
        print(
            f"one flag, one day: minute buckets {minute:,} B, hourly+reasons+events {hourly:,} B, "
            f"HyperLogLogs {hll:,} B ({args.contexts:,} contexts per variation)"
        )
        print(
            f"{args.flags} flags: {per_day / 2**20:.1f} MiB per day; steady state with "
            f"30-day retention {steady / 2**20:.1f} MiB; SDK inventory of "
            f"{args.clients:,} clients {clients_bytes / 2**20:.1f} MiB"
        )
        return {
            "benchmark": "insight",
            "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
            "settings": {
                "clients": args.clients,
                "interval_s": 10,
                "flags": args.flags,
                "variations": 2,
                "contexts_per_variation_per_summary": 5,
                "simulated_seconds": args.seconds,
                "contexts_per_variation_per_day": args.contexts,
            },
            "summary_frame_bytes": len(frames[0]),
            "summaries_per_second": rate,
            "cpu_seconds": round(cpu, 3),
            "cpu_share_of_one_core": round(share, 4),
            "decode_receive_cpu_seconds": round(receive_cpu, 3),
            "flush_cpu_seconds": round(flush_cpu, 3),
            "redis_bytes_one_flag_day": {"minute": minute, "hourly": hourly, "hll": hll},
            "redis_bytes_per_day": per_day,
            "redis_bytes_steady_state_30_days": steady,
            "redis_bytes_inventory": clients_bytes,
            "note": "CPU is this process's time for decode + receive + flushes (Redis I/O "
            "included as client-side CPU); the WebSocket frame parsing is not included",
        }
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--flags", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30, help="simulated seconds of reports")
    parser.add_argument("--contexts", type=int, default=100_000, help="per variation per day")
    parser.add_argument("--sockets", action="store_true", help="real sockets, a real server")
    parser.add_argument("--interval", type=float, default=10.0, help="report interval (s)")
    parser.add_argument("--flush", type=float, default=5.0, help="server flush interval (s)")
    parser.add_argument("--window", type=float, default=60.0, help="steady window (s)")
    parser.add_argument("--idle", type=float, default=20.0, help="idle baseline window (s)")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--name", default="insight")
    parser.add_argument("--label", default="sockets", help="key of the --sockets figures")
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    if args.sockets:
        from bench._harness import machine
        from bench._insight_sockets import run_sockets

        previous = json.loads(out.read_text()) if out.exists() else {}
        sockets = run_sockets(args, summaries)
        sockets["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sockets["machine"] = machine()
        out.write_text(json.dumps({**previous, args.label: sockets}, indent=2) + "\n")
        print(json.dumps(sockets, indent=2))
        print(f"wrote {out}")
        return 0
    result = asyncio.run(run(args))
    # Keep the --sockets figures of an earlier run (under their labels) beside these.
    previous = json.loads(out.read_text()) if out.exists() else {}
    kept = {k: v for k, v in previous.items() if k.startswith("sockets")}
    out.write_text(json.dumps({**result, **kept}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
