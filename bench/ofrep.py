"""OFREP on one server process: evaluations per second with 50 flags, and change → listener.

    python -m bench.ofrep                      # 8 s per mode, 8 connections, 200 listeners
    python -m bench.ofrep --seconds 5 --concurrency 1,8 --listeners 1000

Modes, each from keep-alive HTTP/1.1 connections speaking raw bytes (a lean load
generator, so that it is not what limits the figure; its CPU share is reported):

* ``bulk``: ``POST /ofrep/v1/evaluate/flags`` with a client-side key, every one of
  the 50 flags (``bench_flag``: targets, a rule, a rollout) evaluated per request,
  for 10,000 users in turn (each one evaluated: more than the server keeps answers of);
* ``bulk-same-context``: one user again and again (the answer is kept: no evaluation);
* ``bulk-304``: the same with the ``If-None-Match`` of the first answer (a polling
  provider whose flags did not change);
* ``single``: ``POST /ofrep/v1/evaluate/flags/{key}``, 10,000 users in turn.

Then a browser: the example page (web SDK + OFREP provider) in Chromium, a flag
toggled ``--browser-flips`` times, the time from sending the write to the page's
re-render.

Then ``--listeners`` event streams (``GET /ofrep/v1/events``) are opened and one flag
is toggled ``--changes`` times: the time from the write's answer to each listener's
``refetchEvaluation`` event, and to a re-fetched bulk answer on one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
from tests.support.redisproc import free_port

from bench._harness import Admin, bench_flag, cpus, print_table, summary_ms, write_result
from bench._processes import FlagwireServer, redis_server

ENV = "bench"
FLAGS = [f"bench-ofrep-{i:02d}" for i in range(50)]
CONTEXT = {"context": {"targetingKey": "user-42", "email": "a@example.org", "plan": "pro"}}


def _request(host: str, path: str, key: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes
) -> tuple[int, bytes]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def load(url: str, reqs: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    parts = urlsplit(url)
    lat: list[int] = []
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds
    cpu0 = time.process_time()

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.monotonic() < stop:
                i += concurrency
                t0 = time.perf_counter_ns()
                status, _ = await _exchange(reader, writer, reqs[i % len(reqs)])
                lat.append(time.perf_counter_ns() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    wall = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "per_s": round(len(lat) / wall, 1),
        "statuses": statuses,
        "latency_ms": summary_ms(lat),
        "load_generator_cpu_share": round((time.process_time() - cpu0) / wall, 2),
    }


def _server_cpu(pid: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def listeners(url: str, key: str, admin: Admin, count: int, changes: int) -> dict[str, Any]:
    """``count`` event streams; toggle a flag ``changes`` times; time write → each event."""
    first = await asyncio.to_thread(
        httpx.post,
        url + "/ofrep/v1/evaluate/flags",
        json=CONTEXT,
        headers={"Authorization": f"Bearer {key}"},
    )
    events_url = first.json()["eventStreams"][0]["url"]
    parts = urlsplit(events_url)
    path = f"{parts.path}?{parts.query}"
    arrived: list[list[float]] = [[] for _ in range(changes)]
    current = -1
    ready = 0
    all_ready = asyncio.Event()
    all_arrived = asyncio.Event()

    async def listen() -> None:
        nonlocal ready
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        ready += 1
        if ready == count:
            all_ready.set()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if b"refetchEvaluation" in line and current >= 0:
                    arrived[current].append(time.perf_counter())
                    if len(arrived[current]) == count:
                        all_arrived.set()
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    tasks = [asyncio.create_task(listen()) for _ in range(count)]
    await all_ready.wait()
    await asyncio.sleep(0.5)  # the catch-up events of the first connect
    lat_ns: list[int] = []
    refetch_ns: list[int] = []
    bulk = _request(parts.netloc, "/ofrep/v1/evaluate/flags", key, orjson.dumps(CONTEXT))
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    for i in range(changes):
        current = i
        all_arrived.clear()
        answered = await asyncio.to_thread(
            lambda i=i: (admin.patch_flag(ENV, FLAGS[0], {"on": i % 2 == 1}), time.perf_counter())
        )
        t_write = answered[1]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await all_arrived.wait()
        lat_ns += [int((t - t_write) * 1e9) for t in arrived[i]]
        t0 = time.perf_counter()
        await _exchange(reader, writer, bulk)
        refetch_ns.append(int((time.perf_counter() - t0) * 1e9))
        await asyncio.sleep(0.1)
    writer.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "listeners": count,
        "changes": changes,
        "events": len(lat_ns),
        "expected_events": count * changes,
        "write_answered_to_event_ms": summary_ms(lat_ns),
        "refetch_bulk_ms": summary_ms(refetch_ns),
    }


async def measure(server: FlagwireServer, admin: Admin, key: str, args: Any) -> dict[str, Any]:
    host = urlsplit(server.url).netloc
    body = orjson.dumps(CONTEXT)
    first = await asyncio.to_thread(
        httpx.post,
        server.url + "/ofrep/v1/evaluate/flags",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert len(first.json()["flags"]) == len(FLAGS), first.text[:300]
    etag = first.headers["etag"]
    # 10,000 users in turn: more than the server keeps answers for, so each is evaluated.
    users = [
        orjson.dumps({"context": {**CONTEXT["context"], "targetingKey": f"user-{n}"}})
        for n in range(10_000)
    ]
    bulk_path = "/ofrep/v1/evaluate/flags"
    modes = {
        "bulk": [_request(host, bulk_path, key, u) for u in users],
        "bulk-same-context": [_request(host, bulk_path, key, body)],
        "bulk-304": [_request(host, bulk_path, key, body, f"If-None-Match: {etag}\r\n")],
        "single": [_request(host, f"/ofrep/v1/evaluate/flags/{FLAGS[7]}", key, u) for u in users],
    }
    results: list[dict[str, Any]] = []
    for name, req in modes.items():
        for c in args.concurrency:
            await load(server.url, req, c, 1.0)  # warm up
            cpu0 = _server_cpu(server.pid)
            r = await load(server.url, req, c, args.seconds)
            cpu = _server_cpu(server.pid) - cpu0
            r["server_cpu_share"] = round(cpu / args.seconds, 2)
            r["server_cpu_ms_per_request"] = round(cpu * 1000 / max(1, r["requests"]), 3)
            results.append({"mode": name, **r})
    events = await listeners(server.url, key, admin, args.listeners, args.changes)
    return {"loads": results, "events": events}


def browser(server: FlagwireServer, admin: Admin, key: str, port: int, flips: int) -> Any:
    """Change → re-rendered in Chromium: the example page, web SDK + OFREP provider, SSE."""
    import shutil
    import tempfile

    from tests.support.ofrepjs import CHROMIUM_ARGS, node_modules, page_server

    chromium = shutil.which("chromium")
    try:
        import playwright.sync_api as pw
    except ImportError:
        pw = None
    modules = node_modules()
    if chromium is None or modules is None or pw is None:
        return {"skipped": "needs chromium, npm and playwright"}
    admin.put_flag(ENV, {**bench_flag("page-flag"), "fallthrough": {"variation": 0}})
    admin.patch_flag(ENV, "page-flag", {"client_side": True})
    times: list[int] = []
    with (
        tempfile.TemporaryDirectory() as root,
        page_server(port, modules, Path(root)) as origin,
        pw.sync_playwright() as p,
    ):
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = b.new_page()
        page.goto(f"{origin}/?server={server.url}&key={key}&flag=page-flag&user=u-1&poll=0")
        value = page.locator("#value")
        pw.expect(value).to_have_text("true", timeout=20_000)
        for i in range(flips):
            on = i % 2 == 1
            started = time.time() * 1000
            admin.patch_flag(ENV, "page-flag", {"on": on})
            pw.expect(value).to_have_text("true" if on else "false", timeout=10_000)
            times.append(int((page.evaluate("window.renderedAt") - started) * 1e6))
            time.sleep(0.2)
        b.close()
    return {
        "flips": flips,
        "write_sent_to_page_rendered_ms": summary_ms(times),
        "note": "includes the web provider's 50 ms debounce of refetch events",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    page_port = free_port()
    with redis_server(appendonly=False) as redis:
        server = FlagwireServer(
            redis.url,
            cpu_set=cpus(args.server_cpus),
            env={
                "FLAGWIRE_OFREP_RATE_LIMIT": "1000000000",
                "FLAGWIRE_ALLOWED_ORIGINS": f"http://127.0.0.1:{page_port}",
            },
        ).start()
        try:
            admin = Admin(server.url, server.admin_key)
            admin.ensure_env(ENV)
            for key in FLAGS:
                admin.put_flag(ENV, {**bench_flag(key), "client_side": True})
            made = admin.http.post("/keys", json={"name": "web", "kind": "client", "env": ENV})
            key = made.json()["secret"]
            data = asyncio.run(measure(server, admin, key, args))
            data["browser"] = browser(server, admin, key, page_port, args.browser_flips)
            admin.close()
        finally:
            server.stop()
    return {"flags": len(FLAGS), "load_average_after": os.getloadavg(), **data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="8", help="comma list of connection counts")
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--browser-flips", type=int, default=20)
    parser.add_argument("--server-cpus", default="", help="pin the server (e.g. 0)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    data = run(args)
    print_table(
        ("mode", "conns", "req/s", "p50 ms", "p99 ms", "CPU", "CPU ms/req", "loadgen", "statuses"),
        [
            (
                r["mode"],
                r["concurrency"],
                r["per_s"],
                r["latency_ms"]["p50_ms"],
                r["latency_ms"]["p99_ms"],
                r["server_cpu_share"],
                r["server_cpu_ms_per_request"],
                r["load_generator_cpu_share"],
                r["statuses"],
            )
            for r in data["loads"]
        ],
    )
    ev = data["events"]
    print(
        f"\n{ev['listeners']} event streams, {ev['changes']} changes: "
        f"{ev['events']}/{ev['expected_events']} events; write answered -> event "
        f"p50 {ev['write_answered_to_event_ms']['p50_ms']} ms, "
        f"p99 {ev['write_answered_to_event_ms']['p99_ms']} ms; "
        f"re-fetch p50 {ev['refetch_bulk_ms']['p50_ms']} ms"
    )
    page = data["browser"]
    if "write_sent_to_page_rendered_ms" in page:
        ms = page["write_sent_to_page_rendered_ms"]
        print(
            f"browser (web SDK + OFREP provider, SSE, no polling): write -> page re-rendered "
            f"p50 {ms['p50_ms']} ms, p99 {ms['p99_ms']} ms, max {ms['max_ms']} ms over {ms['n']}"
        )
    else:
        print(f"browser: {page}")
    if not args.no_write:
        print(write_result("ofrep", data))


if __name__ == "__main__":
    main()
