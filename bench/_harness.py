"""What every benchmark shares: CPU sets, the machine, percentiles, the admin API,
result files (JSON + PNG) and the printed table.

The processes a benchmark starts (Redis, flagwire, the floor server) are in
``bench/_processes.py``.  Benchmarks talk only to 127.0.0.1 and start every
process they use; everything they start is stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = [
    "RESULTS",
    "ROOT",
    "Admin",
    "bench_flag",
    "cpus",
    "machine",
    "pct",
    "print_table",
    "summary_ms",
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
