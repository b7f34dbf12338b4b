"""Webhooks: write -> receiver latency, what a webhook costs a write, and the idle cost.

    python -m bench.webhooks                    # 100 writes, 4 A/B rounds of 40, 10 s idle
    python -m bench.webhooks --writes 50 --rounds 2 --idle 5

Starts a private Redis and one ``flagwire serve`` process, and a receiver (a
threaded HTTP server in this process, answering 200 at once).

* **latency**: ``time.monotonic_ns()`` just before each ``PATCH`` (one at a
  time, 30-80 ms apart) to the receiver's stamp when the request arrived;
  the write's own round trip included.
* **write path**: the same writes in alternating rounds with the webhook
  enabled and disabled: the PATCH's round trip (median), and the server's
  CPU time (user + sys from ``/proc``) per write, which includes the delivery.
* **idle**: the server's CPU per second with no webhook anywhere, then with
  one webhook (its environment read once per poll).

Figures are medians over this sitting; the machine is shared, so the load
average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Admin, bench_flag, pct, print_table, write_result
from bench._processes import FlagwireServer, redis_server

ENV = "bench"
FLAG = "bench-webhook"


class _Receiver(BaseHTTPRequestHandler):
    stamps: dict[int, int] = {}

    def do_POST(self) -> None:
        now = time.monotonic_ns()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        data = json.loads(body)["data"]
        if data.get("key") == FLAG and data.get("flag_version"):
            self.stamps[int(data["flag_version"])] = now
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _writes(admin: Admin, n: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """``n`` PATCHes; (flag version, ns before the PATCH, ns of its round trip)."""
    out = []
    for _ in range(n):
        t0 = time.monotonic_ns()
        res = admin.patch_flag(ENV, FLAG, {"description": f"w{rng.random()}"})
        out.append((int(res["version"]), t0, time.monotonic_ns() - t0))
        time.sleep(rng.uniform(0.03, 0.08))
    return out


def _burst_probe(url: str, admin: Admin, n: int) -> float:
    """p99 of /healthz round trips (ms) while ``n`` writes go back to back, and 1 s after."""
    import httpx

    rtts: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                t0 = time.monotonic_ns()
                c.get("/healthz")
                rtts.append((time.monotonic_ns() - t0) / 1e6)
                time.sleep(0.005)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    for i in range(n):
        admin.patch_flag(ENV, FLAG, {"description": f"burst {i}"})
    time.sleep(1.0)  # the burst's deliveries
    stop.set()
    thread.join(10)
    return pct(rtts, 99)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=40)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--name", default="webhooks")
    a = ap.parse_args(argv)
    rng = random.Random(7)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    with redis_server() as redis:
        server = FlagwireServer(redis.url).start()
        try:
            admin = Admin(server.url, server.admin_key)
            admin.ensure_env(ENV)
            admin.put_flag(ENV, bench_flag(FLAG))

            before = _cpu_s(server.pid)
            time.sleep(a.idle)
            idle_none = (_cpu_s(server.pid) - before) / a.idle

            hook = admin._ok(
                admin.http.post(
                    f"/environments/{ENV}/webhooks", json={"url": hook_url, "events": ["*"]}
                )
            )["webhook"]["id"]
            before = _cpu_s(server.pid)
            time.sleep(a.idle)
            idle_one = (_cpu_s(server.pid) - before) / a.idle

            done = _writes(admin, a.writes, rng)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                v in _Receiver.stamps for v, _, _ in done
            ):
                time.sleep(0.05)
            latency_ms = [
                (_Receiver.stamps[v] - t0) / 1e6 for v, t0, _ in done if v in _Receiver.stamps
            ]
            lost = sum(1 for v, _, _ in done if v not in _Receiver.stamps)

            rounds: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            for r in range(a.rounds * 2):
                state = "on" if r % 2 == 0 else "off"
                admin._ok(
                    admin.http.patch(
                        f"/environments/{ENV}/webhooks/{hook}", json={"enabled": state == "on"}
                    )
                )
                cpu0 = _cpu_s(server.pid)
                got = _writes(admin, a.per_round, rng)
                time.sleep(0.5)  # the last deliveries of the round, counted in its CPU
                cpu = _cpu_s(server.pid) - cpu0
                rounds[state].append(
                    {
                        "write_p50_ms": statistics.median(rt / 1e6 for _, _, rt in got),
                        "cpu_ms_per_write": cpu * 1000 / a.per_round,
                    }
                )

            # The event loop under a burst: /healthz answered while 100 writes go back to
            # back, with their deliveries (webhook on) or without (off), in alternating rounds.
            bursts: dict[str, list[float]] = {"on": [], "off": []}
            for r in range(a.rounds * 2):
                state = "on" if r % 2 == 0 else "off"
                admin._ok(
                    admin.http.patch(
                        f"/environments/{ENV}/webhooks/{hook}", json={"enabled": state == "on"}
                    )
                )
                bursts[state].append(_burst_probe(server.url, admin, a.burst))
        finally:
            server.stop()
            receiver.shutdown()

    def med(state: str, key: str) -> float:
        return round(statistics.median(x[key] for x in rounds[state]), 3)

    result = {
        "latency_ms": {
            "n": len(latency_ms),
            "lost": lost,
            "p50": round(pct(latency_ms, 50), 1),
            "p99": round(pct(latency_ms, 99), 1),
            "max": round(max(latency_ms), 1),
        },
        "write_path": {
            "rounds": rounds,
            "write_p50_ms": {
                "webhook on": med("on", "write_p50_ms"),
                "off": med("off", "write_p50_ms"),
            },
            "server_cpu_ms_per_write": {
                "webhook on": med("on", "cpu_ms_per_write"),
                "off": med("off", "cpu_ms_per_write"),
            },
        },
        "healthz_p99_ms_during_burst": {
            "rounds": bursts,
            "webhook on": round(statistics.median(bursts["on"]), 2),
            "off": round(statistics.median(bursts["off"]), 2),
        },
        "idle_cpu_ms_per_s": {
            "no webhook": round(idle_none * 1000, 2),
            "one webhook": round(idle_one * 1000, 2),
        },
        "loadavg": os.getloadavg(),
    }
    lat, wp, idle = result["latency_ms"], result["write_path"], result["idle_cpu_ms_per_s"]
    on_off = wp["server_cpu_ms_per_write"]
    print_table(
        ("figure", "value"),
        [
            (
                "write -> receiver p50 / p99 / max (ms)",
                f"{lat['p50']} / {lat['p99']} / {lat['max']} (n={lat['n']}, lost {lost})",
            ),
            (
                "PATCH round trip p50, webhook on / off (ms)",
                f"{wp['write_p50_ms']['webhook on']} / {wp['write_p50_ms']['off']}",
            ),
            (
                "server CPU per write, webhook on / off (ms)",
                f"{on_off['webhook on']} / {on_off['off']}",
            ),
            (
                f"/healthz p99 during a burst of {a.burst} writes, webhook on / off (ms)",
                f"{result['healthz_p99_ms_during_burst']['webhook on']} / "
                f"{result['healthz_p99_ms_during_burst']['off']}",
            ),
            (
                "idle server CPU, no webhook / one (ms per s)",
                f"{idle['no webhook']} / {idle['one webhook']}",
            ),
            ("load average", " ".join(f"{x:.2f}" for x in result["loadavg"])),
        ],
    )
    print(write_result(a.name, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
