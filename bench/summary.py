"""Write bench/results/SUMMARY.md from the result files (headline figures for the README).

python -m bench.summary
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(x: Any, digits: int = 1) -> str:
    return f"{x:,.{digits}f}" if isinstance(x, int | float) else str(x)


def _propagation() -> dict[str, Any] | None:
    """``propagation.json`` with the rows of ``propagation-large.json`` (5k/10k) added."""
    prop = _load("propagation")
    large = _load("propagation-large")
    if prop and large:
        prop = {
            **prop,
            "rows": prop["rows"] + large["rows"],
            "verdicts": prop.get("verdicts", []) + large.get("verdicts", []),
            "command": f"{prop['command']}` and `{large['command']}",
        }
    return prop or large


def figures() -> dict[str, Any]:
    """The numbers docs/scaling.md uses, from the result files."""
    out: dict[str, Any] = {}
    prop = _propagation()
    if prop:
        rows = {(r["run"], r["clients"]): r for r in prop["rows"] if "p50_ms" in r}
        ns = sorted(n for (run, n) in rows if run == "flagwire" and ("floor", n) in rows)
        if ns:
            big = ns[-1]
            small = ns[-2] if len(ns) > 1 else 0

            def slope(run: str) -> float:
                # cost per added client: the fixed part (HTTP write, Redis hop) cancels out
                hi = rows[(run, big)]["p50_ms"]
                lo = rows[(run, small)]["p50_ms"] if small else 0.0
                return (hi - lo) * 1000 / (big - small)

            out["s_fw_us"] = slope("flagwire")
            out["s_floor_us"] = slope("floor")
            out["frame_bytes"] = rows[("flagwire", big)]["frame_bytes"]
            out["per_client_between"] = [small, big]
    cap = _load("capacity")
    if cap:
        out["idle_kib"] = cap["idle_bytes_per_conn"] / 1024
        out["base_mib"] = cap["rss_before"] / 2**20
        out["accept_per_s"] = cap["storm"]["peak_accept_per_s"]
        out["capacity_clients"] = cap["clients"]
    wp = _load("write_path")
    if wp:
        out["writes_per_s"] = max(r["writes_per_s"] for r in wp["rows"])
    return out


def main() -> int:
    lines = ["# Benchmark results", ""]
    machine = None
    prop = _propagation()
    if prop:
        machine = prop["machine"]
        lines += [
            f"## Propagation (`{prop['command']}`, {prop['when']})",
            "",
            "Admin API flip → last client applied it, over "
            f"{prop['flips']} flips; server on CPU {prop['server_cpus']}, clients on "
            f"CPU {prop['client_cpus']}. Floor: bare `websockets` server, one pre-built frame "
            "written to every socket, same clients, same frame size.",
            "",
            "| run | clients | p50 ms | p99 ms | max ms | p50 x floor | p99 x floor |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in prop["rows"]:
            if "p50_ms" not in r:
                if "error" in r:
                    lines.append(f"| {r['run']} | {r['clients']} | failed: {r['error'][:60]} |||||")
                continue
            lines.append(
                f"| {r['run']} | {r['clients']:,} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                f"{_f(r['max_ms'])} | {_f(r.get('ratio_p50', ''), 2)} | "
                f"{_f(r.get('ratio_p99', ''), 2)} |"
            )
        for r in prop["rows"]:
            if r["run"] == "stalled" and "all_reading" in r:
                a, b = r["all_reading"], r["with_stalled"]
                lines += [
                    "",
                    f"1% stalled clients ({r['stalled_clients']} of {r['clients']:,} never read, "
                    f"{r['frame_bytes']:,} B frames): "
                    f"p50 {_f(a['p50_ms'])} → {_f(b['p50_ms'])} ms, "
                    f"p99 {_f(a['p99_ms'])} → {_f(b['p99_ms'])} ms; server RSS "
                    f"{_f(b['rss_before'] / 2**20)} → {_f(b['rss_after'] / 2**20)} MiB "
                    f"(peak {_f(b['rss_peak'] / 2**20)}); server closes by code: "
                    f"{r.get('server_closes', {})}.",
                ]
        lines += [
            "",
            *[f"- {v}" for v in prop.get("verdicts", [])],
            "",
            "![propagation](propagation.png)",
            "",
        ]
    cap = _load("capacity")
    if cap:
        machine = machine or cap["machine"]
        s = cap["storm"]
        lines += [
            f"## Capacity (`{cap['command']}`, {cap['when']})",
            "",
            f"- {cap['connected']:,} of {cap['clients']:,} clients accepted in {cap['accept_s']} s "
            f"(peak {_f(cap['accept_peak_per_s'], 0)}/s)",
            f"- server memory per idle connection: **{_f(cap['idle_bytes_per_conn'] / 1024)} KiB** "
            f"(RSS {_f(cap['rss_before'] / 2**20)} → {_f(cap['rss_connected'] / 2**20)} MiB)",
            "- reconnect storm after a server restart "
            f"(clients redial within {cap['spread_s']} s): "
            f"all {cap['clients']:,} back at the current version {s['restart_to_all_current_s']} s "
            f"after the restart began ({s['ready_to_all_current_s']} s after the new process was "
            f"ready); peak {_f(s['peak_accept_per_s'], 0)} handshakes/s; complete: {s['complete']}",
            *[f"- {v}" for v in cap.get("verdicts", [])],
            "",
        ]
    rs = _load("restarts")
    if rs:
        machine = machine or rs["machine"]
        k = rs["kill_switch"]
        lines += [
            f"## Restarts (`{rs['command']}`, {rs['when']})",
            "",
            f"{rs['clients']:,} real `FlagClient`s (default reconnect policy) in "
            f"{rs['processes']} processes; the server restarted (SIGTERM) "
            f"{len(rs['restarts'])} times within {rs['restarts_within_s']} s; load average "
            f"{rs['machine']['loadavg_at_start'][0]:.1f} at the start.",
            "",
            "| restart | down s | READY again | attempt that succeeded began, p50 / max s "
            "after readiness | READY p50 / p99 / max s after readiness |",
            "|---:|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(rs["restarts"], 1):
            b = r["successful_attempt_began_after_readiness_s"]
            y = r["ready_after_readiness_s"]
            lines.append(
                f"| {i} | {r['down_s']} | {r['ready_again']:,} | {b['p50']} / {b['max']} | "
                f"{y['p50']} / {y['p99']} / {y['max']} |"
            )
        a = k["after_readiness_s"]
        lines += [
            "",
            f"- kill switch written right after the last restart was ready: "
            f"{k['clients_with_it']:,}/{rs['clients']:,} clients had it, p50 {a['p50']} s, "
            f"p99 {a['p99']} s, max **{a['max']} s** after readiness "
            f"(max {k['after_write_s']['max']} s after the write)",
            *[f"- {v}" for v in rs.get("verdicts", [])],
            "",
        ]
    wp = _load("write_path")
    if wp:
        lines += [
            f"## Write path (`{wp['command']}`, {wp['when']}, "
            f"load {wp['machine']['loadavg_at_start'][0]:.1f})",
            "",
            "Raw keep-alive HTTP/1.1 PATCHes, each flipping a flag (no two in flight on one flag). "
            "Server CPU per write is user + system from /proc; the analysis is in "
            "`write-profile.md`.",
            "",
            "| in flight | writes/s | p50 ms | p99 ms | load generator CPU | server CPU share "
            "| server CPU ms/write |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['concurrency']} | {_f(r['writes_per_s'])} | {_f(r['p50_ms'], 2)} | "
            f"{_f(r['p99_ms'], 2)} | {r.get('loadgen_cpu_share', '')} | "
            f"{r.get('server_cpu_share', '')} | {r.get('server_cpu_ms_per_write', '')} |"
            for r in wp["rows"]
        ]
        lines.append("")
    soak = _load("soak")
    if soak:
        wl = soak.get("write_latency") or {}
        lines += [
            f"## Soak (`{soak['command']}`, {soak['when']})",
            "",
            f"{soak['clients']:,} clients, {soak['minutes']} min, a change every "
            f"{int(soak['interval_s'] * 1000)} ms over {soak['flags']} flags, events: "
            f"{', '.join(f'{e[1]} at {e[0]} s' for e in soak['events'])}. "
            f"{soak['writes_acknowledged']:,} changes acknowledged"
            + (
                f" ({soak['changes_per_s']} per second of {1 / soak['interval_s']:g} asked; "
                f"write p50 {wl['p50_ms']:.1f} ms, p99 {wl['p99_ms']:.1f} ms, "
                f"max {wl['max_ms']:.1f} ms)"
                if wl
                else ""
            )
            + f"; clients with wrong flags: "
            f"{soak['clients_wrong']}, behind: {soak['clients_behind']}, out-of-order updates: "
            f"{soak['out_of_order']}, acknowledged but lost: {len(soak['acknowledged_but_lost'])}; "
            f"memory growth after warm-up {soak['rss_growth_after_warmup']:+.1%}. "
            f"**{'PASSED' if soak['passed'] else 'FAILED'}**",
            "",
        ]
    if machine:
        lines += [
            "## Machine",
            "",
            f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
            f"Python {machine['python']}, Linux {machine['kernel']}. A KVM guest shared with five "
            "other engineers running test suites during these runs (load average "
            f"{machine['loadavg_at_start'][0]:.1f} at the start of the propagation run "
            "on 2 cores): "
            "CPU pinning separates the server from the clients but not from the other work, so "
            "absolute figures are pessimistic and vary by 30% or more between runs; the ratio to "
            "the floor, measured in the same run, is the steadier figure.",
            "",
        ]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(figures(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
