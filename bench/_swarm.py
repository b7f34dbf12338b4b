"""A swarm of lean flagwire protocol clients, thousands of sockets per process.

Each worker process runs one asyncio loop holding N WebSocket connections,
each a bare :class:`asyncio.Protocol` with its own minimal frame reader: no
task, no queue and no compression per connection, so that the client side is
cheap next to the server being measured.  Every connection applies what it
receives the way a real client does (decodes the JSON, checks that versions
rise by exactly one, keeps each flag's version, acknowledges each version)
and stamps its arrival with ``time.monotonic_ns()`` — CLOCK_MONOTONIC, one
clock for every process on the machine, so the coordinator can subtract its
own trigger time from a worker's receive time.

This module holds both ends of the ``multiprocessing`` pipe: :class:`Swarm`,
the coordinator, and :func:`worker_main`, the command loop each worker runs.
The connections and their bookkeeping are in ``bench/_swarm_worker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any

from bench._swarm_report import Reporter
from bench._swarm_worker import Worker, pin, raise_nofile

__all__ = ["Swarm", "worker_main"]


def worker_main(pipe: Connection, cfg: dict[str, Any]) -> None:
    pin(cfg.get("cpus"))
    raise_nofile()
    gc.set_threshold(100_000, 50, 100)
    asyncio.run(_worker_loop(pipe, cfg))


async def _worker_loop(pipe: Connection, cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    w = Worker(
        host=cfg["host"],
        port=cfg["port"],
        path=cfg["path"],
        headers=cfg.get("headers", {}),
        reconnect=cfg.get("reconnect", False),
        spread=cfg.get("spread", 1.0),
        ack=cfg.get("ack", True),
        lean=cfg.get("lean", False),
    )
    done = loop.create_future()
    reporters: list[Reporter] = []
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except EOFError:
            loop.remove_reader(pipe.fileno())
            inbox.put_nowait(("exit",))

    loop.add_reader(pipe.fileno(), readable)

    async def run(cmd: tuple[Any, ...]) -> None:
        op = cmd[0]
        if op == "connect":
            reply: Any = await w.connect(cmd[1], cmd[2], cmd[3])
        elif op == "wait":
            reply = await w.wait(cmd[1], cmd[2], cmd[3])
        elif op == "stats":
            reply = w.stats()
        elif op == "opens":  # handshake completion times since the last call
            reply, w.open_ts = w.open_ts, []
        elif op == "check":
            reply = w.check(cmd[1], cmd[2])
        elif op == "set":
            setattr(w, cmd[1], cmd[2])
            reply = True
        elif op == "drop":  # abort connections so they reconnect (a client-side storm)
            for c in w.conns:
                if c.transport is not None:
                    c.transport.abort()
            reply = True
        elif op == "report":  # fleet-insight summaries (bench/_swarm_report.py)
            reporter = Reporter(w, cmd[1], cmd[2], cmd[3])
            reporters.append(reporter)
            reply = reporter.start()
        elif op == "report_stats":
            reply = reporters[-1].stats() if reporters else {}
        elif op == "report_stop":
            reply = reporters[-1].stop() if reporters else {}
        elif op == "exit":
            w.close_all()
            if not done.done():
                done.set_result(None)
            return
        else:
            reply = {"error": f"unknown command {op}"}
        pipe.send(reply)

    async def serve() -> None:
        while True:
            cmd = await inbox.get()
            await run(cmd)
            if done.done():
                return

    await serve()
    await asyncio.sleep(0.05)


class Swarm:
    """Client worker processes, driven synchronously from the coordinator.

    Args:
        url: ``ws://host:port/path``.
        n: connections in all, spread evenly over ``processes`` workers.
        headers: extra handshake headers (``Authorization``).
        cpus: CPU set every worker is pinned to.
    """

    def __init__(
        self,
        url: str,
        n: int,
        *,
        processes: int = 1,
        headers: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        reconnect: bool = False,
        spread: float = 1.0,
        ack: bool = True,
        lean: bool = False,
    ) -> None:
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.n = n
        self.processes = max(1, min(processes, n))
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        cfg = {
            "host": host,
            "port": int(port),
            "path": "/" + path,
            "headers": headers or {},
            "cpus": cpus,
            "reconnect": reconnect,
            "spread": spread,
            "ack": ack,
            "lean": lean,
        }
        for _ in range(self.processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        self.shares = [
            n // self.processes + (1 if i < n % self.processes else 0)
            for i in range(self.processes)
        ]

    def _all(self, *cmd: Any, timeout: float = 120.0) -> list[Any]:
        for p in self.pipes:
            p.send(cmd)
        out = []
        for p in self.pipes:
            if not p.poll(timeout):
                raise TimeoutError(f"worker did not answer {cmd[0]} within {timeout}s")
            out.append(p.recv())
        return out

    def connect(self, *, concurrency: int = 256, stall_fraction: float = 0.0) -> dict[str, Any]:
        for p, share in zip(self.pipes, self.shares, strict=True):
            p.send(("connect", share, concurrency, stall_fraction))
        replies = [p.recv() for p in self.pipes]
        return {
            "ok": sum(r["ok"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "t0": min(r["t0"] for r in replies),
            "t1": max(r["t1"] for r in replies),
            "last_refusal": next((r["last_refusal"] for r in replies if r["last_refusal"]), ""),
        }

    def wait(self, version: int, timeout: float = 10.0) -> dict[str, Any]:
        replies = self._all("wait", version, timeout, None, timeout=timeout + 30)
        return {
            "reached": sum(r["reached"] for r in replies),
            "want": sum(r["want"] for r in replies),
            "max_t": max(r["max_t"] for r in replies),
            "min_t": min((r["min_t"] for r in replies if r["min_t"]), default=0),
            "timeout": any(r.get("timeout") for r in replies),
        }

    def stats(self) -> dict[str, Any]:
        replies = self._all("stats")
        total: dict[str, Any] = {}
        for r in replies:
            for k, v in r.items():
                if k == "close_codes":
                    cc = total.setdefault(k, {})
                    for code, cnt in v.items():
                        cc[code] = cc.get(code, 0) + cnt
                elif k == "min_version":
                    total[k] = min(total.get(k, v), v)
                elif k in ("max_version", "frame_bytes"):
                    total[k] = max(total.get(k, v), v)
                elif isinstance(v, int | float) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
                elif v:
                    total[k] = v
        return total

    def check(self, expected: dict[str, int], version: int) -> dict[str, int]:
        replies = self._all("check", expected, version)
        return {
            "wrong": sum(r["wrong"] for r in replies),
            "behind": sum(r["behind"] for r in replies),
        }

    def opens(self) -> list[int]:
        """Monotonic times of the handshakes completed since the last call."""
        return sorted(t for r in self._all("opens") for t in r)

    def set(self, name: str, value: Any) -> None:
        self._all("set", name, value)

    def drop(self) -> None:
        self._all("drop")

    def report(self, identify: bytes, summaries: list[bytes], interval: float) -> dict[str, Any]:
        """Every open connection sends ``identify``, then one of ``summaries`` every
        ``interval`` s, staggered (``bench/_swarm_report.py``)."""
        return _sum(self._all("report", identify, summaries, interval))

    def report_stats(self, stop: bool = False) -> dict[str, Any]:
        return _sum(self._all("report_stop" if stop else "report_stats"))

    def close(self) -> None:
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(("exit",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sum(replies: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in replies:
        for k, v in r.items():
            out[k] = out.get(k, 0) + v
    return out
