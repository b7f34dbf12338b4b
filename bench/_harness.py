"""What every benchmark shares: processes on free ports, CPU pinning, the admin API,
memory readings, result files (JSON + PNG) and the printed table.

Benchmarks talk only to 127.0.0.1 and start every process they use; everything
they start is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.redisproc import RedisProcess, free_port  # noqa: E402

__all__ = [
    "RESULTS",
    "ROOT",
    "Admin",
    "FlagwireServer",
    "FloorServer",
    "RedisProcess",
    "free_port",
    "machine",
    "pct",
    "print_table",
    "rss_tree",
    "write_result",
]

SERVER_CPUS = {0}
CLIENT_CPUS = {1}


def cpus(spec: str) -> set[int] | None:
    """``"0"``, ``"0,1"`` or ``""`` (no pinning) → a CPU set."""
    return {int(c) for c in spec.split(",") if c.strip()} or None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    ms = [v / 1e6 for v in values_ns]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def rss_tree(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def _pinned(cpu_set: set[int] | None) -> Any:
    if not cpu_set:
        return None
    return lambda: os.sched_setaffinity(0, cpu_set)


class FloorServer:
    """The bare broadcast server (``bench/_floor.py``) in its own process."""

    def __init__(self, *, mode: str = "write", cpu_set: set[int] | None = None) -> None:
        self.port = free_port()
        self.control_port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench._floor",
                "--port",
                str(self.port),
                "--control-port",
                str(self.control_port),
                "--mode",
                mode,
            ],
            cwd=ROOT,
            preexec_fn=_pinned(cpu_set),
        )
        wait_port(self.port, proc=self.proc)
        wait_port(self.control_port, proc=self.proc)
        self.ctl = socket.create_connection(("127.0.0.1", self.control_port))
        self.ctl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.ctl.makefile("rb")
        self.url = f"ws://127.0.0.1:{self.port}/"

    def send(self, payload: bytes) -> tuple[int, int]:
        """Broadcast ``payload``; (connections, nanoseconds the send loop took)."""
        self.ctl.sendall(payload + b"\n")
        line = self.reader.readline().split()
        return int(line[1]), int(line[2])

    def freeze(self) -> None:
        self.ctl.sendall(b"gc\n")
        self.reader.readline()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ctl.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> FloorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FlagwireServer:
    """``flagwire serve`` on a free port against ``redis_url``, pinned to ``cpu_set``."""

    def __init__(
        self,
        redis_url: str,
        *,
        workers: int = 1,
        cpu_set: set[int] | None = None,
        admin_key: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.workers = workers
        self.cpu_set = cpu_set
        self.admin_key = admin_key or "fw_admin_bench_" + secrets.token_urlsafe(24)
        self.port = port or free_port()
        self.extra_env = env or {}
        self.log_path = (
            log or Path(os.environ.get("TMPDIR", "/tmp")) / f"flagwire-bench-{self.port}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("flagwire")
        return [
            str(exe),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--redis-url",
            self.redis_url,
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout: float = 30.0) -> FlagwireServer:
        env = {
            **os.environ,
            "FLAGWIRE_ADMIN_KEY": self.admin_key,
            "FLAGWIRE_LOG_FORMAT": "json",
            "FLAGWIRE_LOG_LEVEL": "warning",
            # the admin rate limit would throttle the benchmark's own writes
            "FLAGWIRE_RATE_LIMIT": "100000000",
            **self.extra_env,
        }
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_pinned(self.cpu_set),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"flagwire serve exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"flagwire serve not ready after {timeout}s; log: {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_tree(self.pid) if self.proc else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        with contextlib.suppress(AttributeError):
            self._log.close()

    def restart(self) -> FlagwireServer:
        self.stop()
        return self.start()

    def __enter__(self) -> FlagwireServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Admin:
    """The few admin API calls the benchmarks make."""

    def __init__(self, base_url: str, admin_key: str) -> None:
        self.http = httpx.Client(
            base_url=base_url + "/api/v1",
            timeout=30,
            headers={"Authorization": f"Bearer {admin_key}"},
        )

    def _ok(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise RuntimeError(
                f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:500]}"
            )
        return r.json() if r.content else None

    def ensure_env(self, env: str) -> None:
        r = self.http.post("/environments", json={"key": env, "name": env})
        if r.status_code not in (200, 201, 409):
            self._ok(r)

    def sdk_key(self, env: str) -> str:
        body = self._ok(
            self.http.post("/keys", json={"name": f"bench-{env}", "kind": "sdk", "env": env})
        )
        for name in ("secret", "key", "token"):
            if isinstance(body.get(name), str):
                return str(body[name])
        raise RuntimeError(f"no secret in POST /keys answer: {sorted(body)}")

    def put_flag(self, env: str, doc: dict[str, Any]) -> dict[str, Any]:
        return dict(self._ok(self.http.put(f"/environments/{env}/flags/{doc['key']}", json=doc)))

    def patch_flag(
        self, env: str, key: str, patch: dict[str, Any], wait: float | None = None
    ) -> dict[str, Any]:
        params = {"wait": str(wait)} if wait is not None else None
        return dict(
            self._ok(self.http.patch(f"/environments/{env}/flags/{key}", json=patch, params=params))
        )

    def list_flags(self, env: str) -> list[dict[str, Any]]:
        body = self._ok(self.http.get(f"/environments/{env}/flags"))
        items = body.get("flags", body.get("items", body)) if isinstance(body, dict) else body
        return list(items)

    def env_info(self, env: str) -> dict[str, Any]:
        return dict(self._ok(self.http.get(f"/environments/{env}")))

    def close(self) -> None:
        self.http.close()


def bench_flag(key: str, *, pad: int = 0) -> dict[str, Any]:
    """A representative flag: two variations, a few targets, one rule, a rollout."""
    doc: dict[str, Any] = {
        "key": key,
        "on": True,
        "variations": [True, False],
        "off_variation": 1,
        "targets": [{"variation": 0, "values": ["user-1", "user-2", "user-3"]}],
        "rules": [
            {
                "clauses": [{"attribute": "email", "op": "ends_with", "values": ["@example.com"]}],
                "variation": 0,
            }
        ],
        "fallthrough": {
            "rollout": {
                "variations": [{"variation": 0, "weight": 25000}, {"variation": 1, "weight": 75000}]
            }
        },
    }
    if pad:  # ~pad bytes more, as individual targets (a description is capped at 4 KiB)
        doc["targets"].append(
            {"variation": 1, "values": [f"pad-{i:08d}" for i in range(pad // 15)]}
        )
    return doc


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **data,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@contextlib.contextmanager
def redis_server(
    cpu_set: set[int] | None = None, appendonly: bool = True
) -> Iterator[RedisProcess]:
    """A private Redis on a free port (append-only, like production)."""
    proc = RedisProcess(appendonly=appendonly, extra_args=["--appendfsync", "everysec"])
    proc.start()
    if cpu_set:
        assert proc.proc is not None
        os.sched_setaffinity(proc.proc.pid, cpu_set)
    try:
        yield proc
    finally:
        proc.close()
