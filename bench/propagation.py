"""Propagation: admin API call that flips a flag → the last of N clients has applied it.

    python -m bench.propagation                      # quick: N = 100, 1000
    python -m bench.propagation --clients 100,1000,5000,10000 --flips 50
    python -m bench.propagation --runs floor,flagwire,flagwire-w2,stalled --profile

Runs, each in a fresh server with N lean protocol clients (``bench/_swarm.py``)
in separate processes:

* ``floor``: a bare ``websockets`` server writing one pre-built frame to every
  socket (``bench/_floor.py``; no Redis, no flag logic) — the cost of the
  sends alone;
* ``flagwire``: ``flagwire serve`` (one process) on a private Redis;
* ``flagwire-w2``: ``flagwire serve --workers 2``;
* ``stalled``: flagwire with a bigger flag, first with every client reading,
  then with 1% more clients that never read: latency for the others and the
  server's memory, before and after.

The server is pinned to ``--server-cpus`` and the clients, Redis and this
coordinator to ``--client-cpus``.  Times are ``time.monotonic_ns()`` in every
process (CLOCK_MONOTONIC is one clock machine-wide on Linux): from just
before the trigger (the HTTP PATCH, or the floor's control message) to the
receive time of the last client, as that client stamped it.

Beside the latencies, each ``floor`` and ``flagwire`` row reports the server
process's CPU time (user + system from ``/proc/PID/stat``, its children
included) over the measured flips and their pauses, per change and per
client (``server_cpu_us_per_client``; issue 16): the server's own cost, which
the clients sharing one core cannot distort; and its minor page faults per
change and client (a hot path mapping fresh memory shows there).  To compare
two trees' servers under one harness, run this module with ``PYTHONPATH``
naming the other tree's ``client`` and ``server`` first: ``flagwire serve``
inherits it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench._harness import (
    RESULTS,
    Admin,
    bench_flag,
    cpus,
    summary_ms,
    write_result,
)
from bench._processes import (
    FlagwireServer,
    FloorServer,
    cpu_seconds,
    minor_faults,
    redis_server,
    rss_tree,
)
from bench._profile import start_profile, stop_profile, summarize_profile
from bench._propagation_report import activities, chart, print_report, summary_line, verdicts
from bench._swarm import Swarm

ENV = "bench"
FLAG = "bench-kill-switch"
PER_PROCESS = 5000  # client sockets per client process


def _procs(n: int) -> int:
    return max(1, math.ceil(n / PER_PROCESS))


def run_floor(n: int, flips: int, a: argparse.Namespace, frame_bytes: int = 0) -> dict[str, Any]:
    """``frame_bytes``: pad the message to the size of flagwire's frame (same bytes on the wire)."""
    doc = bench_flag(FLAG)
    probe = _floor_payload(doc, 1)
    if frame_bytes > len(probe):
        doc["description"] = "x" * (frame_bytes - len(probe) - len(b',"description":""'))
    with (
        FloorServer(mode=a.floor_mode, cpu_set=cpus(a.server_cpus)) as floor,
        Swarm(
            floor.url,
            n,
            processes=_procs(n),
            cpus=cpus(a.client_cpus),
            ack=a.floor_ack,
            lean=True,
        ) as swarm,
    ):
        conn = swarm.connect()
        if conn["failed"]:
            raise RuntimeError(f"floor: {conn['failed']} of {n} clients could not connect")
        floor.freeze()
        lat, first, loops = [], [], []
        size = 0
        cpu0 = 0.0
        for i in range(a.warmup + flips):
            if i == a.warmup:
                cpu0, flt0 = cpu_seconds(floor.pid), minor_faults(floor.pid)
            v = i + 1
            doc["on"] = not doc["on"]
            payload = _floor_payload(doc, v)
            size = len(payload)
            t0 = time.monotonic_ns()
            _n, loop_ns = floor.send(payload)
            w = swarm.wait(v, timeout=30)
            if w["timeout"]:
                raise RuntimeError(
                    f"floor: only {w['reached']} of {w['want']} clients got version {v}"
                )
            if i >= a.warmup:
                lat.append(w["max_t"] - t0)
                first.append(w["min_t"] - t0)
                loops.append(loop_ns)
            time.sleep(a.pause)
        cpu, flt = cpu_seconds(floor.pid) - cpu0, minor_faults(floor.pid) - flt0
        rss = rss_tree(floor.pid)
    return {
        "run": "floor",
        "clients": n,
        **summary_ms(lat),
        "first_p50_ms": summary_ms(first)["p50_ms"],
        "send_loop_p50_ms": summary_ms(loops)["p50_ms"],
        "frame_bytes": size,
        "server_rss": rss,
        **_cpu_figures(cpu, flt, flips, n),
        "samples_ms": [x / 1e6 for x in lat],
    }


def _cpu_figures(cpu_s: float, faults: int, flips: int, n: int) -> dict[str, float]:
    """Server CPU (user + system) and minor page faults over the measured flips.

    The pauses are counted too: that is where the acknowledgements arrive, so
    they are part of a change's cost.  Per client, the figure the clients'
    shared core cannot distort.
    """
    per_flip = cpu_s / flips if flips else float("nan")
    return {
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_ms_per_flip": round(per_flip * 1e3, 3),
        "server_cpu_us_per_client": round(per_flip / n * 1e6, 3),
        "server_minflt_per_client": round(faults / flips / n, 3) if flips else float("nan"),
    }


def _floor_payload(doc: dict[str, Any], v: int) -> bytes:
    data = {**doc, "version": v, "updated_at": "2026-01-01T00:00:00.000Z", "updated_by": "bench"}
    return orjson.dumps({"type": "patch", "kind": "flag", "key": FLAG, "data": data, "version": v})


def _flagwire_setup(server: FlagwireServer, doc: dict[str, Any]) -> tuple[Admin, str]:
    admin = Admin(server.url, server.admin_key)
    admin.ensure_env(ENV)
    admin.put_flag(ENV, doc)
    return admin, admin.sdk_key(ENV)


def _flip(admin: Admin, swarm: Swarm, doc: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    doc["on"] = not doc["on"]
    t0 = time.monotonic_ns()
    resp = admin.patch_flag(ENV, FLAG, {"on": doc["on"]})
    t_api = time.monotonic_ns()
    v = int(resp["env_version"])
    w = swarm.wait(v, timeout=30)
    if w["timeout"]:
        raise RuntimeError(f"flagwire: only {w['reached']} of {w['want']} clients got version {v}")
    return t0, t_api, {**w, "version": v}


def run_flagwire(
    n: int, flips: int, a: argparse.Namespace, *, workers: int = 1, profile: Path | None = None
) -> dict[str, Any]:
    doc = bench_flag(FLAG)
    name = "flagwire" if workers == 1 else f"flagwire-w{workers}"
    server_cpus = cpus(a.server_cpus) if workers == 1 else cpus(a.server_cpus_multi)
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, workers=workers, cpu_set=server_cpus) as server,
    ):
        admin, sdk = _flagwire_setup(server, doc)
        with Swarm(
            f"ws://127.0.0.1:{server.port}/api/v1/stream",
            n,
            processes=_procs(n),
            cpus=cpus(a.client_cpus),
            headers={"Authorization": f"Bearer {sdk}"},
            lean=True,
            ack=not a.no_ack,
        ) as swarm:
            conn = swarm.connect()
            if conn["failed"]:
                raise RuntimeError(
                    f"{name}: {conn['failed']} of {n} clients could not connect "
                    f"({conn['last_refusal']})"
                )
            rss_idle = server.rss()
            lat, first, api = [], [], []
            spy = None
            cpu0 = 0.0
            for i in range(a.warmup + flips):
                if i == a.warmup:
                    if profile is not None:
                        spy = start_profile(server.pid, profile)
                    cpu0, flt0 = cpu_seconds(server.pid), minor_faults(server.pid)
                t0, t_api, w = _flip(admin, swarm, doc)
                if i >= a.warmup:
                    lat.append(w["max_t"] - t0)
                    first.append(w["min_t"] - t0)
                    api.append(t_api - t0)
                time.sleep(a.pause)
            cpu, flt = cpu_seconds(server.pid) - cpu0, minor_faults(server.pid) - flt0
            if spy is not None:
                stop_profile(spy)
            stats = swarm.stats()
            rss = server.rss()
        admin.close()
    return {
        "run": name,
        "clients": n,
        **summary_ms(lat),
        "first_p50_ms": summary_ms(first)["p50_ms"],
        "api_p50_ms": summary_ms(api)["p50_ms"],
        "frame_bytes": stats["frame_bytes"],
        "server_rss": rss,
        "server_rss_idle": rss_idle,
        **_cpu_figures(cpu, flt, flips, n),
        "gaps": stats["gaps"],
        "drops": stats["drops"],
        "samples_ms": [x / 1e6 for x in lat],
    }


def run_stalled(n: int, flips: int, a: argparse.Namespace) -> dict[str, Any]:
    """Baseline flips with every client reading, then again with 1% more that never read."""
    doc = bench_flag(FLAG, pad=a.stall_pad)
    n_stalled = max(1, n // 100)
    with (
        redis_server(cpus(a.client_cpus)) as redis,
        FlagwireServer(redis.url, cpu_set=cpus(a.server_cpus)) as server,
    ):
        admin, sdk = _flagwire_setup(server, doc)
        with (
            Swarm(
                f"ws://127.0.0.1:{server.port}/api/v1/stream",
                n,
                processes=_procs(n),
                cpus=cpus(a.client_cpus),
                headers={"Authorization": f"Bearer {sdk}"},
                lean=True,
            ) as swarm,
            Swarm(
                f"ws://127.0.0.1:{server.port}/api/v1/stream",
                n_stalled,
                processes=1,
                cpus=cpus(a.client_cpus),
                headers={"Authorization": f"Bearer {sdk}"},
                lean=True,
            ) as stalled,
        ):
            swarm.connect()
            phases: dict[str, Any] = {}
            for phase in ("all_reading", "with_stalled"):
                if phase == "with_stalled":
                    stalled.connect(stall_fraction=1.0)
                lat = []
                rss_before = server.rss()
                rss_peak = rss_before
                for i in range(a.warmup + flips):
                    t0, _t_api, w = _flip(admin, swarm, doc)
                    if i >= a.warmup:
                        lat.append(w["max_t"] - t0)
                    rss_peak = max(rss_peak, server.rss())
                    time.sleep(a.pause)
                phases[phase] = {
                    **summary_ms(lat),
                    "rss_before": rss_before,
                    "rss_peak": rss_peak,
                    "rss_after": server.rss(),
                }
            st = swarm.stats()
            phases["server_closes"] = _closes(server.url)
            phases["stalled_clients"] = n_stalled
            phases["frame_bytes"] = st["frame_bytes"]
            phases["readers_gaps"] = st["gaps"]
            phases["readers_drops"] = st["drops"]
            phases["bytes_per_stalled_client"] = st["frame_bytes"] * flips
        admin.close()
    return {"run": "stalled", "clients": n, **phases}


def _closes(url: str) -> dict[str, float]:
    """``flagwire_stream_closes_total`` by close code, from ``/metrics``."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("flagwire_stream_closes_total{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            out[code] = out.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", default="100,1000", help="comma list of N (default 100,1000)")
    ap.add_argument("--flips", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pause", type=float, default=0.25, help="seconds between flips (acks settle)")
    ap.add_argument("--runs", default="floor,flagwire,flagwire-w2,stalled")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--server-cpus-multi", default="0,1", help="CPUs for --workers 2")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--floor-mode", choices=("write", "broadcast"), default="write")
    ap.add_argument(
        "--floor-ack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="floor clients acknowledge each message like flagwire's (same client work; "
        "the bare server reads and drops the acks)",
    )
    ap.add_argument(
        "--stall-pad", type=int, default=30000, help="bytes of padding in the stalled run's flag"
    )
    ap.add_argument(
        "--no-ack",
        action="store_true",
        help="clients do not acknowledge (diagnostic: the broadcast without ack traffic)",
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the server at the largest N")
    ap.add_argument("--name", default="propagation")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.clients.split(",") if x]
    runs = [r for r in a.runs.split(",") if r]
    rows: list[dict[str, Any]] = []
    # flagwire first, so that the floor can send frames of the same size
    order = {"flagwire": 0, "flagwire-w2": 1, "floor": 2, "stalled": 3}
    runs.sort(key=lambda r: order.get(r, 9))
    for n in ns:
        frame = 0
        for run in runs:
            t = time.monotonic()
            try:
                if run == "floor":
                    r = run_floor(n, a.flips, a, frame)
                elif run == "flagwire":
                    prof = (
                        RESULTS / f"profile-{n}.speedscope.json"
                        if a.profile and n == max(ns)
                        else None
                    )
                    r = run_flagwire(n, a.flips, a, profile=prof)
                    if prof is not None and prof.exists():
                        prof.with_suffix("").with_suffix(".txt").write_text(
                            activities(prof) + "\n" + summarize_profile(prof)
                        )
                elif run.startswith("flagwire-w"):
                    r = run_flagwire(n, a.flips, a, workers=int(run.removeprefix("flagwire-w")))
                elif run == "stalled":
                    if n != min(max(ns), 1000):
                        continue
                    r = run_stalled(n, a.flips, a)
                else:
                    raise SystemExit(f"unknown run {run}")
            except (RuntimeError, TimeoutError, OSError, KeyError) as exc:
                print(f"{run} N={n}: FAILED: {exc}", file=sys.stderr)
                r = {"run": run, "clients": n, "error": str(exc)}
            r["seconds"] = round(time.monotonic() - t, 1)
            if run.startswith("flagwire") and not frame:
                frame = int(r.get("frame_bytes") or 0)
            rows.append(r)
            print(f"  {run:12} N={n:<6} {summary_line(r)}", flush=True)
    notes = verdicts(rows)
    table = [r for r in rows if "p99_ms" in r]
    print_report(rows, table, notes)
    png = RESULTS / f"{a.name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if table:
        chart(table, png)
    path = write_result(
        a.name,
        {
            "flips": a.flips,
            "server_cpus": a.server_cpus,
            "client_cpus": a.client_cpus,
            "floor_mode": a.floor_mode,
            "floor_clients_ack": a.floor_ack,
            "rows": rows,
            "verdicts": notes,
            "chart": png.name,
        },
    )
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
