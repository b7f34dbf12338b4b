"""Soak: clients stay correct for minutes of changes, a server restart and a Redis restart.

    python -m bench.soak                 # 1,000 clients, 10 minutes
    python -m bench.soak --minutes 2     # a shorter run

A change every ``--interval`` (100 ms) across ``--flags`` (50) flags through
the admin API, while ``--clients`` protocol clients (``bench/_swarm.py``, full
decoding: every client keeps each flag's version) stay connected.  At 25% of
the run the server is restarted (SIGTERM, start again on the same port); at
35% Redis is restarted (append-only file kept).  Memory "after warm-up" is read
at 50%, so the second half of the run is the steady state it is compared with.
Clients reconnect with jitter and resume from their version.

Checked at the end, after the writes stop:

* every client is at the store's environment version and holds exactly the
  store's flag versions (nothing lost);
* no client ever saw a version go backwards (``stale``) — a gap is allowed
  only when it was followed by a resync, which the final check covers;
* every change the API acknowledged is in the store;
* server memory at the end is within 10% of memory after warm-up (at 50%,
  on the same process, long after both restarts).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--flags", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--name", default="soak")
    a = ap.parse_args(argv)
    duration = a.minutes * 60
    flags = [f"soak-{i:02d}" for i in range(a.flags)]
    events: list[tuple[float, str]] = []
    acked: dict[str, int] = {}
    failed_writes = 0
    writes = 0
    write_ns: list[int] = []  # each acknowledged write's latency, as the admin client saw it
    rss: dict[str, int] = {}
    samples: list[tuple[float, int]] = []
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus)) as server,
    ):
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env(ENV)
        for key in flags:
            admin.put_flag(ENV, bench_flag(key))
        sdk = admin.sdk_key(ENV)
        swarm = Swarm(
            f"ws://127.0.0.1:{server.port}/api/v1/stream",
            a.clients,
            processes=1,
            cpus=cpus(a.client_cpus),
            headers={"Authorization": f"Bearer {sdk}"},
            reconnect=True,
            spread=1.0,
        )
        try:
            c = swarm.connect()
            print(
                f"{c['ok']}/{a.clients} clients connected; soaking for {a.minutes} min", flush=True
            )
            start = time.monotonic()
            did_server = did_redis = False
            i = 0
            on = dict.fromkeys(flags, True)
            next_t = start
            last_sample = 0.0
            while (now := time.monotonic()) - start < duration:
                frac = (now - start) / duration
                if frac >= 0.2 and "warm" not in rss:  # before the restart, for the record
                    rss["warm"] = server.rss()
                if frac >= 0.25 and not did_server:
                    did_server = True
                    events.append((round(now - start, 1), "server restart"))
                    print("  restarting the server", flush=True)
                    server.restart()
                if frac >= 0.5 and "warm_after_restart" not in rss:
                    rss["warm_after_restart"] = server.rss()
                if frac >= 0.35 and not did_redis:
                    did_redis = True
                    events.append((round(now - start, 1), "redis restart"))
                    print("  restarting Redis", flush=True)
                    redis.restart()
                if now - last_sample >= 5:
                    last_sample = now
                    samples.append((round(now - start, 1), server.rss()))
                key = flags[i % len(flags)]
                i += 1
                on[key] = not on[key]
                try:
                    t0 = time.monotonic_ns()
                    r = admin.http.patch(f"/environments/{ENV}/flags/{key}", json={"on": on[key]})
                    if r.status_code < 400:
                        write_ns.append(time.monotonic_ns() - t0)
                        writes += 1
                        acked[key] = max(acked.get(key, 0), int(r.json()["version"]))
                    else:
                        failed_writes += 1
                except httpx.HTTPError:
                    failed_writes += 1
                next_t += a.interval
                time.sleep(max(0.0, next_t - time.monotonic()))
            rss["end"] = server.rss()
            time.sleep(1.0)
            store = {d["key"]: int(d["version"]) for d in admin.list_flags(ENV)}
            env_version = int(admin.env_info(ENV)["version"])
            deadline = time.monotonic() + 60
            while True:
                st = swarm.stats()
                if st["min_version"] >= env_version or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            check = swarm.check(store, env_version)
            st = swarm.stats()
        finally:
            swarm.close()
            admin.close()
    lost_acks = sorted(k for k, v in acked.items() if store.get(k, 0) < v)
    growth = (rss["end"] - rss["warm_after_restart"]) / rss["warm_after_restart"]
    ok = not check["wrong"] and not check["behind"] and not st["stale"] and not lost_acks
    out = {
        "minutes": a.minutes,
        "clients": a.clients,
        "flags": a.flags,
        "interval_s": a.interval,
        "writes_acknowledged": writes,
        "writes_failed": failed_writes,
        "changes_per_s": round(writes / duration, 2),
        "write_latency": summary_ms(write_ns),
        "events": events,
        "env_version": env_version,
        "clients_wrong": check["wrong"],
        "clients_behind": check["behind"],
        "out_of_order": st["stale"],
        "gaps_resynced": st["gaps"],
        "reconnects": st["reconnects"],
        "acknowledged_but_lost": lost_acks,
        "rss": rss,
        "rss_growth_after_warmup": round(growth, 4),
        "rss_samples": samples,
        "passed": ok and abs(growth) <= 0.10,
    }
    print()
    print_table(
        ["figure", "value", "want"],
        [
            ["writes acknowledged", writes, ""],
            ["writes refused while down", failed_writes, ""],
            ["clients with wrong flags", check["wrong"], 0],
            ["clients behind", check["behind"], 0],
            ["out-of-order updates", st["stale"], 0],
            ["gaps (then resynced)", st["gaps"], ""],
            ["acknowledged but lost", len(lost_acks), 0],
            ["reconnect attempts", st["reconnects"], ""],
            ["streams dropped", st["drops"], ""],
            ["close codes received", st.get("close_codes", {}), ""],
            ["changes per second achieved", round(writes / duration, 1), round(1 / a.interval, 1)],
            ["write p50 / p99 / max (ms)", _lat(out["write_latency"]), "p99 <= 50"],
            ["RSS after warm-up (MiB)", rss["warm_after_restart"] / 2**20, ""],
            ["RSS at end (MiB)", rss["end"] / 2**20, ""],
            ["growth", f"{growth:+.1%}", "within 10%"],
        ],
    )
    print("PASSED" if out["passed"] else "FAILED")
    chart(out, RESULTS / f"{a.name}.png")
    path = write_result(a.name, {**out, "chart": f"{a.name}.png"})
    print(f"\nwrote {path}")
    return 0 if out["passed"] else 1


def _lat(s: dict[str, float]) -> str:
    return f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} / {s['max_ms']:.1f}"


def chart(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [s[0] for s in out["rss_samples"]]
    ax.plot(xs, [s[1] / 2**20 for s in out["rss_samples"]], color="#37a")
    for t, label in out["events"]:
        ax.axvline(t, color="#c33", ls="--")
        ax.text(t, ax.get_ylim()[1], label, fontsize=8, va="top", rotation=90)
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(
        f"soak: {out['clients']} clients, {out['writes_acknowledged']} changes", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
