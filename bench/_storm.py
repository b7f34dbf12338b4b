"""What a reconnect-storm benchmark measures around a restart: readiness, CPU and memory.

Shared by ``bench/restarts.py`` and the storm part of ``bench/capacity.py``:

* :func:`restart_timed` stops and starts the server and says when it was
  ready, polled every 20 ms (``FlagwireServer.start`` polls every 100 ms,
  which would flatter the figures measured from readiness);
* :class:`Sampler` reads the server's and the clients' CPU time (user +
  system, from the kernel: the figure a busy shared machine cannot distort)
  and the server's RSS every few tens of milliseconds through the storm, so
  a result can say which side was the bound and how high memory went.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench._processes import FlagwireServer, rss_tree

__all__ = ["Sampler", "cpu_seconds", "restart_timed", "runqueue_seconds"]


def restart_timed(server: FlagwireServer) -> tuple[int, int]:
    """Stop (SIGTERM) and start ``server``; the monotonic ns of the stop and of readiness."""
    t_stop = time.monotonic_ns()
    server.stop()
    first: list[int] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=1) as http:
            while not done.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(server.url + "/readyz").status_code == 200:
                        first.append(time.monotonic_ns())
                        return
                time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        server.start()
    finally:
        poller.join(5)
        done.set()
    return t_stop, first[0] if first else time.monotonic_ns()


def runqueue_seconds(pids: Sequence[int]) -> float:
    """Seconds the threads of ``pids`` spent runnable but waiting for a CPU (schedstat).

    On a shared machine this is the time a process lost to everyone else's
    work: ready to run, not running.
    """
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[1])
    return total / 1e9


def cpu_seconds(pids: Sequence[int], tree: bool = False) -> float:
    """User + system CPU seconds of ``pids`` (and their descendants with ``tree``)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)] if tree else [p]
        except psutil.Error:
            continue
        for q in procs:
            with contextlib.suppress(psutil.Error):
                t = q.cpu_times()
                total += t.user + t.system
    return total


class Sampler:
    """Samples server RSS and CPU (and the clients' CPU) in a thread until stopped.

    Args:
        server_pid: called each sample (the server's pid changes on restart;
            None while it is down).
        client_pids: the client processes.
        interval: seconds between samples.
    """

    def __init__(
        self,
        server_pid: Callable[[], int | None],
        client_pids: Sequence[int],
        interval: float = 0.05,
    ) -> None:
        self.server_pid, self.client_pids, self.interval = server_pid, client_pids, interval
        #: (ns, rss, server CPU, clients CPU, server run-queue wait, clients run-queue wait)
        self.samples: list[tuple[int, int, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self.server_pid()
            if pid is not None:
                self.samples.append(
                    (
                        time.monotonic_ns(),
                        rss_tree(pid),
                        cpu_seconds([pid], tree=True),
                        cpu_seconds(self.client_pids),
                        runqueue_seconds([pid]),
                        runqueue_seconds(self.client_pids),
                    )
                )
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, t0: int, t1: int) -> dict[str, Any]:
        """Peak RSS, and each side's CPU and run-queue seconds, from ``t0`` to ``t1`` ns.

        Counted for the server process that was running at ``t0`` (the one
        after the restart).  ``*_waiting_s`` is time runnable but not running
        (other processes had the CPU); ``*_share`` is CPU seconds per second.
        """
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        wall = (inside[-1][0] - inside[0][0]) / 1e9
        server = inside[-1][2] - inside[0][2]
        clients = inside[-1][3] - inside[0][3]
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server, 3),
            "server_cpu_share": round(server / wall, 3) if wall else None,
            "clients_cpu_s": round(clients, 3),
            "clients_cpu_share": round(clients / wall, 3) if wall else None,
            "server_waiting_s": round(inside[-1][4] - inside[0][4], 3),
            "clients_waiting_s": round(inside[-1][5] - inside[0][5], 3),
            "peak_rss": max(s[1] for s in inside),
        }
