"""Thousands of flags: start-up, memory, evaluation and one toggle, by number of flags.

    python -m bench.many_flags                     # 100 / 1,000 / 10,000 flags
    python -m bench.many_flags --flags 100,5000 --evals 200000

What it runs is the client's own core, fed the bytes a server sends: the hello
and snapshot frames decoded and handed to :class:`StreamState` (start → READY
is that, the part that grows with the number of flags; the network adds a
constant), then evaluations cycling over every flag beside one hot flag, then
toggles of one flag as patch frames.  Memory is what tracemalloc sees retained
by the subscription after READY (documents and snapshot), per flag.  The
server's evaluate endpoint builds the same :class:`Snapshot` from its mirror's
documents: "server snapshot" is that build.

``--e2e`` measures start → READY end to end instead: a private Redis and a
real ``flagwire serve`` on loopback, the environment filled through the admin
API (``apply``, 2,000 documents at a time), then a :class:`FlagClient`
started and waited for ``READY`` over a real socket, ``--repeat`` times,
with the client process's CPU time for it and the server's resident memory.

Flags have two rules each (bench_flag's rule and a second one on another
attribute), targets and a 25/75 rollout.  Figures are medians of ``--repeat``
runs, in this thread's CPU time (the machine is shared: a wall clock would
time the other processes too); run time stays under a minute on this machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench._harness import bench_flag, print_table, write_result
from flagwire.core.evaluation import Snapshot
from flagwire.core.protocol import decode
from flagwire.core.subscription import StreamState


def flag(i: int) -> dict[str, Any]:
    doc = bench_flag(f"flag-{i:05d}")
    doc["rules"].append(
        {
            "clauses": [{"attribute": "plan", "op": "in", "values": ["gold", "platinum"]}],
            "variation": 1,
        }
    )
    doc["version"] = 1
    return doc


def frames(n: int) -> tuple[bytes, bytes]:
    # Only bytes stay alive here: documents held by the benchmark itself would be
    # scanned by every garbage collection the client's decoding triggers.
    docs = (flag(i) for i in range(n))
    hello = {
        "type": "hello",
        "env": "bench",
        "epoch": "e1",
        "version": 1,
        "heartbeat": 15.0,
        "protocol": 1,
    }
    snap = {
        "type": "snapshot",
        "env": "bench",
        "epoch": "e1",
        "version": 1,
        "flags": {d["key"]: d for d in docs},
        "segments": {},
    }
    return orjson.dumps(hello), orjson.dumps(snap)


def ready(hello: bytes, snap: bytes) -> StreamState:
    sub = StreamState()
    sub.connection_opened()
    sub.receive(decode(hello))
    out = sub.receive(decode(snap))
    assert out.caught_up
    assert sub.snapshot is not None
    return sub


def measure(n: int, evals: int, repeat: int) -> dict[str, Any]:
    hello, snap = frames(n)
    gc.collect()
    starts = []
    for _ in range(repeat):
        t = time.thread_time_ns()
        sub = ready(hello, snap)
        starts.append(time.thread_time_ns() - t)
        del sub
        gc.collect()

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sub = ready(hello, snap)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    s = sub.snapshot
    assert s is not None
    keys = list(s.flags)
    ctxs = [{"key": f"user-{i}", "email": f"u{i}@other.org", "plan": "free"} for i in range(64)]
    evaluate = s.evaluate

    def cycle(ks: list[str]) -> float:
        m = len(ks)
        c = len(ctxs)
        t = time.thread_time_ns()
        for i in range(evals):
            evaluate(ks[i % m], ctxs[i % c], False, bool)
        return (time.thread_time_ns() - t) / evals

    cycle(keys)  # the first pass compiles what is compiled on use; measured passes follow
    all_ns = statistics.median(cycle(keys) for _ in range(repeat))
    one_ns = statistics.median(cycle(keys[:1]) for _ in range(repeat))

    toggles = []
    version = 1
    for i in range(200):
        version += 1
        d = dict(flag(n // 2), on=bool(i % 2), version=1 + version)
        frame = orjson.dumps(
            {
                "type": "patch",
                "kind": "flag",
                "key": d["key"],
                "version": version,
                "data": d,
            }
        )
        t = time.thread_time_ns()
        out = sub.receive(decode(frame))
        toggles.append(time.thread_time_ns() - t)
        assert out.ack == version
    flags = dict(s.flags)
    builds = []
    for _ in range(repeat):
        t = time.thread_time_ns()
        Snapshot(flags, {}, 1, "e1")
        builds.append(time.thread_time_ns() - t)
    return {
        "flags": n,
        "ready_ms": round(statistics.median(starts) / 1e6, 2),
        "bytes_per_flag": round(held / n),
        "eval_all_ns": round(all_ns),
        "eval_one_ns": round(one_ns),
        "eval_ratio": round(all_ns / one_ns, 2),
        "toggle_us_p50": round(statistics.median(toggles) / 1e3, 1),
        "toggle_us_max": round(max(toggles) / 1e3, 1),
        "server_snapshot_ms": round(statistics.median(builds) / 1e6, 2),
    }


def _unversioned(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "version"}  # the server sets it


def e2e(n: int, repeat: int) -> dict[str, Any]:
    """Start → READY of a real client against a real server holding ``n`` flags."""
    import asyncio
    import resource

    from bench._harness import Admin
    from bench._processes import FlagwireServer, cpu_seconds, redis_server
    from flagwire import ClientStatus, FlagClient

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    with redis_server(appendonly=False) as redis, FlagwireServer(redis.url) as server:
        admin = Admin(server.url, server.admin_key)
        admin.ensure_env("bench")
        for start in range(0, n, 2000):
            docs = [
                {"kind": "flag", "key": f"flag-{i:05d}", "document": _unversioned(flag(i))}
                for i in range(start, min(n, start + 2000))
            ]
            admin._ok(
                admin.http.post(
                    "/environments/bench/apply", json={"name": "bench", "documents": docs}
                )
            )
        sdk_key = admin.sdk_key("bench")
        rss_before = server.rss()

        server_cpu: list[float] = []

        async def once() -> tuple[float, float]:
            client = FlagClient(server.url, sdk_key, start_timeout=30)
            s, c, t = cpu_seconds(server.pid), cpu(), time.perf_counter()
            status = await client.start()
            wall, used = time.perf_counter() - t, cpu() - c
            server_cpu.append(cpu_seconds(server.pid) - s)
            assert status is ClientStatus.READY, status
            assert client.bool_variation(f"flag-{n - 1:05d}", {"key": "u"}, False) in (True, False)
            await client.close()
            return wall, used

        runs = [asyncio.run(once()) for _ in range(repeat)]
        gc.collect()
        return {
            "flags": n,
            "ready_ms": round(statistics.median(w for w, _ in runs) * 1e3, 1),
            "ready_cpu_ms": round(statistics.median(c for _, c in runs) * 1e3, 1),
            "ready_ms_max": round(max(w for w, _ in runs) * 1e3, 1),
            "server_cpu_ms": round(statistics.median(server_cpu) * 1e3, 1),
            "server_rss_mib": round(server.rss() / 2**20, 1),
            "server_rss_mib_before_clients": round(rss_before / 2**20, 1),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--flags", default="100,1000,10000")
    ap.add_argument("--evals", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="many_flags")
    ap.add_argument("--e2e", action="store_true", help="a real server and client over a socket")
    a = ap.parse_args(argv)
    if a.e2e:
        e2e_rows = []
        for n in (int(x) for x in a.flags.split(",")):
            r = e2e(n, a.repeat)
            e2e_rows.append(r)
            print(r, flush=True)
        print()
        print_table(list(e2e_rows[0]), [list(r.values()) for r in e2e_rows])
        path = write_result(a.name, {"repeat": a.repeat, "e2e": True, "rows": e2e_rows})
        print(f"\nwrote {path}")
        return 0
    rows = []
    for n in (int(x) for x in a.flags.split(",")):
        r = measure(n, a.evals, a.repeat)
        rows.append(r)
        print(r, flush=True)
    print()
    print_table(
        [
            "flags",
            "start→READY ms",
            "bytes/flag",
            "eval all ns",
            "eval one ns",
            "ratio",
            "toggle µs p50",
            "toggle µs max",
            "server snapshot ms",
        ],
        [list(r.values()) for r in rows],
    )
    path = write_result(a.name, {"evals": a.evals, "repeat": a.repeat, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
