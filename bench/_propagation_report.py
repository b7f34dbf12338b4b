"""What a propagation run reports: the printed tables, the verdicts against targets, the chart.

Why apart from ``bench/propagation.py``: that module runs the servers and the
clients; this one only reads the rows they produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench._harness import print_table

__all__ = [
    "CPU_TARGET",
    "TARGETS",
    "activities",
    "chart",
    "print_report",
    "summary_line",
    "verdicts",
]


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for run in ("floor", "flagwire", "flagwire-w2"):
            pts = sorted((r["clients"], r[metric]) for r in rows if r["run"] == run)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("connected clients")
        ax.set_ylabel(f"{metric[:3]} trigger → last client (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("flagwire propagation vs bare-broadcast floor (2 cores: server 1, clients 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TARGETS = {1000: 25.0, 10000: 250.0}
#: Issue 16: the server's CPU per change and client at most this many times the acking floor's.
CPU_TARGET = 1.5


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    by = {(r["run"], r["clients"]): r for r in rows if "p99_ms" in r}
    for (run, n), r in sorted(by.items()):
        if run == "floor":
            continue
        floor = by.get(("floor", n))
        if floor:
            ratio = r["p99_ms"] / floor["p99_ms"]
            r["ratio_p99"] = round(ratio, 2)
            r["ratio_p50"] = round(r["p50_ms"] / floor["p50_ms"], 2)
            if floor.get("server_cpu_us_per_client") and "server_cpu_us_per_client" in r:
                r["ratio_cpu"] = round(
                    r["server_cpu_us_per_client"] / floor["server_cpu_us_per_client"], 2
                )
        if n in TARGETS and run == "flagwire":
            ok = r["p99_ms"] < TARGETS[n]
            out.append(
                f"{run} N={n}: p99 {r['p99_ms']:.1f} ms {'meets' if ok else 'MISSES'} "
                f"the {TARGETS[n]:.0f} ms target"
            )
        if n == 1000 and run == "flagwire" and floor:
            ok = r["ratio_p99"] <= 1.5
            out.append(
                f"{run} N={n}: p99 is {r['ratio_p99']:.2f}x the floor: "
                f"{'meets' if ok else 'MISSES'} "
                "the 1.5x target"
            )
        if n in (1000, 10000) and run == "flagwire" and "ratio_cpu" in r:
            ok = r["ratio_cpu"] <= CPU_TARGET
            out.append(
                f"{run} N={n}: server CPU {r['server_cpu_us_per_client']:.2f} us per change "
                f"and client is {r['ratio_cpu']:.2f}x the floor's: "
                f"{'meets' if ok else 'MISSES'} the {CPU_TARGET}x target"
            )
    return out


def print_report(rows: list[dict[str, Any]], table: list[dict[str, Any]], notes: list[str]) -> None:
    """The run table, the stalled run's phases and the verdicts, on stdout."""
    print()
    print_table(
        [
            "run",
            "clients",
            "p50 ms",
            "p99 ms",
            "max ms",
            "first p50",
            "x floor p99",
            "CPU us/client",
            "x floor CPU",
            "RSS MiB",
        ],
        [
            [
                r["run"],
                r["clients"],
                r["p50_ms"],
                r["p99_ms"],
                r["max_ms"],
                r.get("first_p50_ms", ""),
                r.get("ratio_p99", ""),
                r.get("server_cpu_us_per_client", ""),
                r.get("ratio_cpu", ""),
                r.get("server_rss", 0) / 2**20,
            ]
            for r in table
        ],
    )
    for r in rows:
        if r["run"] == "stalled" and "all_reading" in r:
            print(
                f"\nserver closed streams (by code): {r['server_closes']}"
                f"\n1% stalled ({r['stalled_clients']} of {r['clients']} never read, "
                f"{r['frame_bytes']} B frames):"
            )
            print_table(
                [
                    "phase",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "RSS before MiB",
                    "RSS peak MiB",
                    "RSS after MiB",
                ],
                [
                    [
                        ph,
                        r[ph]["p50_ms"],
                        r[ph]["p99_ms"],
                        r[ph]["max_ms"],
                        r[ph]["rss_before"] / 2**20,
                        r[ph]["rss_peak"] / 2**20,
                        r[ph]["rss_after"] / 2**20,
                    ]
                    for ph in ("all_reading", "with_stalled")
                ],
            )
    for note in notes:
        print(note)


def summary_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    if "p50_ms" in r:
        return (
            f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.2f} ms"
            f"  CPU {r.get('server_cpu_us_per_client', float('nan')):.2f} us/client"
            f"  ({r['seconds']} s)"
        )
    return f"stalled: {r['all_reading']['p99_ms']:.2f} → {r['with_stalled']['p99_ms']:.2f} ms p99"


#: What a flagwire server does during a propagation run, by the frame a sample is under
#: (the first match from the top of this list wins; names as py-spy reports them).
_ACTIVITIES: list[tuple[str, tuple[str, ...]]] = [
    ("fan-out: writing the change to every stream (send syscalls)", ("EnvFeed.broadcast",)),
    (
        "keepalive pings and pongs (uvicorn, every heartbeat)",
        (
            "WebSocketsSansIOProtocol.send_keepalive_ping",
            "WebSocketsSansIOProtocol.handle_pong",
            "WebSocketsSansIOProtocol.schedule_ping",
        ),
    ),
    ("acks: flagwire's handling (rate limit, parse, tally, metric)", ("_handle",)),
    (
        "acks: WebSocket frame parsing (the fence's shortcut, uvicorn + websockets)",
        # py-spy often shows websockets' parser generators without their callers
        (
            "FlagwireWebSocketProtocol._small_text_frames",
            "WebSocketsSansIOProtocol.data_received",
            "Protocol.parse",
            "Frame.parse",
            "StreamReader.at_eof",
            "StreamReader.read_exact",
        ),
    ),
    (
        "acks: socket reads (recv syscalls) and event-loop dispatch",
        ("_SelectorSocketTransport._read_ready",),
    ),
    (
        "admin API: the PATCH that makes the change (HTTP, store write)",
        (
            "RequestResponseCycle.run_asgi",
            "HttpToolsProtocol.data_received",
        ),
    ),
    ("change-log reader, outside the fan-out (XREAD, apply)", ("ChangeReader._run",)),
    ("ack reports to Redis (5 ms batches)", ("AckReporter._flush_loop",)),
    ("idle: waiting in epoll", ("EpollSelector.select",)),
]


_LOOP = "event loop's own bookkeeping (callback dispatch, epoll events)"
_LOOP_FRAMES = frozenset(
    {
        "Handle._run",
        "BaseSelectorEventLoop._process_events",
        "BaseEventLoop._run_once",
        "BaseEventLoop._add_callback",
    }
)
_OTHER = "other (timers, background loops, garbage collection)"


def activities(path: Path) -> str:
    """Share of a py-spy profile (speedscope JSON) per server activity, as a text table."""
    import json

    d = json.loads(path.read_text())
    names = [str(f["name"]) for f in d["shared"]["frames"]]
    shares: dict[str, float] = {}
    total = 0.0
    for prof in d["profiles"]:
        for stack, w in zip(prof["samples"], prof["weights"], strict=True):
            total += w
            on = {names[i] for i in stack}
            label = next(
                (lab for lab, frames in _ACTIVITIES if any(f in on for f in frames)),
                _LOOP if stack and names[stack[-1]] in _LOOP_FRAMES else _OTHER,
            )
            shares[label] = shares.get(label, 0.0) + w
    if not total:
        return "no samples\n"
    lines = ["share of server samples by activity:"]
    lines += [
        f"  {w / total:6.1%}  {lab}" for lab, w in sorted(shares.items(), key=lambda x: -x[1])
    ]
    return "\n".join(lines) + "\n"
