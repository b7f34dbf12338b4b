"""``python -m bench.insight --sockets``: the fleet-insight load over real sockets.

One ``flagwire serve`` process (pinned to ``--server-cpus``) with its own Redis;
``--clients`` lean WebSocket clients (``bench/_swarm.py``, 5,000 per worker
process) with an SDK key of an environment of ``--flags`` flags.  Each client
sends ``identify`` once, then a summary of every flag (2 variations, reasons,
a sketch of 5 contexts each, an event on one) every ``--interval`` seconds, the
clients staggered evenly over the interval.

Measured, over a steady window of ``--window`` seconds that starts one interval
and one flush after the first summaries:

* **server CPU share**: user+system time of the server process (and its
  children) from ``/proc`` over the window, divided by the window; the same over
  an equal window with the clients connected and silent is the idle baseline;
* **summaries the server took**: the evaluations it aggregated into Redis over the
  window, divided by the evaluations of a summary (this must be clients / interval
  per second, or the server is not keeping up), and the bytes queued in the
  kernel between clients and server at both edges (growing: not keeping up);
  ``flagwire_insight_summaries_total`` by result after it, and how long
  ``/metrics`` took to answer (an HTTP request waits behind the loop's backlog);
* **Redis memory**: ``used_memory`` of the private Redis at the window's edges,
  extrapolated per day, and ``MEMORY USAGE`` of each insight key family after it;
* **a flag change while reporting**: the time until the last client has it;
* **server RSS** idle and reporting; the client workers' CPU (the harness must
  not be the limit) and their unsent bytes (a server that cannot keep up leaves
  summaries in the clients' buffers).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from typing import Any

import httpx
import orjson
import psutil
import redis as redislib

from bench._harness import Admin, bench_flag, cpus
from bench._processes import FlagwireServer, redis_server
from bench._swarm import Swarm
from flagwire.core.protocol import Identify, encode

__all__ = ["run_sockets"]

ENV = "bench"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and their descendants."""
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


def summaries_by_result(url: str) -> tuple[dict[str, float], float | None]:
    """``flagwire_insight_summaries_total`` by result, and how long ``/metrics`` took
    (None: no answer within 30 s, a server whose loop is swamped)."""
    t = time.monotonic()
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}, None
    took = time.monotonic() - t
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flagwire_insight_summaries_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0.0) + float(line.rsplit(" ", 1)[1])
    return out, took


def queued_bytes(port: int) -> dict[str, int]:
    """Bytes in the kernel between the clients and the server: the server's sockets'
    Recv-Q (arrived, not read yet) and the clients' Send-Q (not yet accepted by the
    server's receive window).  Both grow when the server cannot keep up."""
    proc = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    server_recv = client_send = 0
    for line in proc.stdout.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        if cols[2].rsplit(":", 1)[-1] == str(port):
            server_recv += int(cols[0])
        else:
            client_send += int(cols[1])
    return {"server_recv_q": server_recv, "client_send_q": client_send}


def evaluations_in_redis(r: redislib.Redis, prefix: str) -> int:
    """Every evaluation the server has aggregated into Redis (the minute buckets)."""
    total = 0
    for key in r.scan_iter(match=f"{prefix}:{{{ENV}}}:ins:m:*", count=1000):
        total += sum(int(v) for v in r.hvals(key))
    return total


def insight_memory(r: redislib.Redis, prefix: str) -> dict[str, int]:
    """``MEMORY USAGE`` summed by key family (``m``, ``h``, ``u``, ``apps``, ``clients``...)."""
    out: dict[str, int] = {}
    for key in r.scan_iter(match=f"{prefix}:{{{ENV}}}:ins:*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        family = name.split(":ins:", 1)[1].split(":", 1)[0]
        out[family] = out.get(family, 0) + int(r.memory_usage(name, samples=0) or 0)
    return out


def _window(
    server: FlagwireServer,
    swarm: Swarm,
    r: redislib.Redis,
    prefix: str,
    seconds: float,
    evals_per_summary: float,
) -> dict[str, Any]:
    workers = [p.pid for p in swarm.procs]
    fam0 = insight_memory(r, prefix)
    mem0 = int(r.info("memory")["used_memory"])
    ev0, q0 = evaluations_in_redis(r, prefix), queued_bytes(server.port)
    sent0 = swarm.report_stats()
    s0, c0, w0 = cpu_seconds([server.pid]), cpu_seconds(workers), time.monotonic()
    time.sleep(seconds)
    s1, c1, w1 = cpu_seconds([server.pid]), cpu_seconds(workers), time.monotonic()
    ev1, q1 = evaluations_in_redis(r, prefix), queued_bytes(server.port)
    sent1 = swarm.report_stats()
    mem1 = int(r.info("memory")["used_memory"])
    fam1 = insight_memory(r, prefix)
    by_result, metrics_s = summaries_by_result(server.url)
    wall = w1 - w0
    return {
        "seconds": round(wall, 2),
        "server_cpu_s": round(s1 - s0, 3),
        "server_cpu_share": round((s1 - s0) / wall, 4),
        "client_workers_cpu_share": round((c1 - c0) / wall, 4),
        "summaries_sent_per_s": round((sent1.get("sent", 0) - sent0.get("sent", 0)) / wall, 1),
        # What reached Redis, in summaries: the flush lags by up to one flush interval.
        "summaries_aggregated_per_s": round((ev1 - ev0) / evals_per_summary / wall, 1),
        "queued_start": {**q0, "client_buffers": sent0.get("client_write_buffer_bytes", 0)},
        "queued_end": {**q1, "client_buffers": sent1.get("client_write_buffer_bytes", 0)},
        "summaries_total_by_result": by_result,
        "metrics_answer_s": None if metrics_s is None else round(metrics_s, 3),
        "redis_used_memory_start": mem0,
        "redis_used_memory_growth": mem1 - mem0,
        "insight_keys_bytes_start": fam0,
        "insight_keys_bytes_growth": {k: v - fam0.get(k, 0) for k, v in fam1.items()},
        "server_rss": server.rss(),
        "loadavg": os.getloadavg(),
    }


def run_sockets(args: Any, summaries: Any) -> dict[str, Any]:
    n = args.clients
    flags = [f"flag-{i:02d}" for i in range(args.flags)]
    frames = summaries(flags, 20, random.Random(7))
    evals = sum(
        sum(sum(v["reasons"].values()) for v in per.values())
        for f in frames
        for per in orjson.loads(f)["flags"].values()
    ) / len(frames)
    identify = encode(Identify("flagwire-python", "bench", "bench-app", "swarm", "bench", 1))
    with (
        redis_server(cpus(args.client_cpus)) as rp,
        FlagwireServer(
            rp.url,
            cpu_set=cpus(args.server_cpus),
            env={"FLAGWIRE_INSIGHT_FLUSH": str(args.flush)},
        ) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        for key in flags:
            admin.put_flag(ENV, bench_flag(key))
        sdk = admin.sdk_key(ENV)
        r = redislib.Redis.from_url(rp.url)
        prefix = os.environ.get("FLAGWIRE_REDIS_PREFIX", "fw")
        out: dict[str, Any] = {
            "clients": n,
            "flags": args.flags,
            "interval_s": args.interval,
            "server_flush_s": args.flush,
            "summary_frame_bytes": len(frames[0]),
            "evaluations_per_summary": round(evals, 1),
        }
        with Swarm(
            f"ws://127.0.0.1:{server.port}/api/v1/stream",
            n,
            processes=max(1, math.ceil(n / 5000)),
            cpus=cpus(args.client_cpus),
            headers={"Authorization": f"Bearer {sdk}"},
            lean=True,
        ) as swarm:
            c = swarm.connect(concurrency=1000)
            out["connected"] = c["ok"]
            out["failed"] = c["failed"]
            print(f"connected {c['ok']}/{n} in {(c['t1'] - c['t0']) / 1e9:.1f} s", flush=True)
            time.sleep(3)
            out["idle"] = _window(server, swarm, r, prefix, args.idle, evals)
            print(f"idle: {out['idle']}", flush=True)
            out["started"] = swarm.report(identify, frames, args.interval)
            time.sleep(args.interval + args.flush + 1)  # every client has reported, one flush
            out["reporting"] = _window(server, swarm, r, prefix, args.window, evals)
            # Still reporting: does a flag change still reach every client, and how fast?
            t0 = time.monotonic_ns()
            version = int(admin.patch_flag(ENV, flags[0], {"on": False})["env_version"])
            got = swarm.wait(version, timeout=30)
            out["change_while_reporting"] = {
                "reached": got["reached"],
                "want": got["want"],
                "last_client_ms": round((got["max_t"] - t0) / 1e6, 1) if got["max_t"] else None,
                "timeout": got["timeout"],
            }
            print(f"a change while reporting: {out['change_while_reporting']}", flush=True)
            out["client_side"] = swarm.report_stats(stop=True)
            print(f"reporting: {out['reporting']}", flush=True)
            out["open_at_end"] = swarm.stats()["open"]
            time.sleep(args.flush + 1)  # the last summaries flushed, the inventory still full
            out["redis_bytes_by_family"] = insight_memory(r, prefix)
        out["redis_used_memory_end"] = int(r.info("memory")["used_memory"])
        r.close()
        admin.close()
    rep, idle = out["reporting"], out["idle"]
    out["report_cpu_share"] = round(rep["server_cpu_share"] - idle["server_cpu_share"], 4)
    accepted = rep["summaries_aggregated_per_s"]
    # CPU per summary is what a loaded machine does not distort much: the share a server
    # needs for clients / interval summaries a second follows from it.
    out["server_cpu_ms_per_summary"] = (
        round(out["report_cpu_share"] / accepted * 1000, 3) if accepted else None
    )
    out["cpu_share_needed"] = (
        round(out["server_cpu_ms_per_summary"] * n / args.interval / 1000, 3) if accepted else None
    )
    out["redis_used_memory_per_day_extrapolated"] = round(
        rep["redis_used_memory_growth"] / rep["seconds"] * 86_400
    )
    out["insight_keys_bytes_per_day_extrapolated"] = round(
        sum(rep["insight_keys_bytes_growth"].values()) / rep["seconds"] * 86_400
    )
    return out
