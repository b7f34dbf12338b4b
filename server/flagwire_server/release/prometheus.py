"""Guards from Prometheus: one instant query, its value, and whether it breaches.

Why so small: a guard is a PromQL expression that yields one number and a
bound; Prometheus does the statistics.  :func:`breach` is pure;
:func:`query` is the only I/O (Prometheus's HTTP API, ``/api/v1/query``).
A query that fails or yields nothing is *not* a breach (a Prometheus outage
must not roll back every release) but is recorded on the plan.
"""

from __future__ import annotations

import math
from typing import Any, Final

import httpx

from flagwire.core.errors import ValidationError

__all__ = ["PrometheusError", "breach", "parse_guards", "query"]

MAX_GUARDS: Final = 10


class PrometheusError(Exception):
    """Prometheus did not answer the query with one number."""


def parse_guards(raw: object) -> list[dict[str, Any]]:
    """``[{"query": PromQL, "max"|"min": number, "action": "rollback"|"pause"}]``, checked.

    Raises:
        ValidationError: every problem, with its path.
    """
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_GUARDS:
        raise ValidationError([("guards", f"expected a list of at most {MAX_GUARDS} guards")])
    errors: list[tuple[str, str]] = []
    out = []
    for i, g in enumerate(raw):
        path = f"guards[{i}]"
        if not isinstance(g, dict):
            errors.append((path, "expected an object"))
            continue
        errors += [
            (f"{path}.{k}", "unknown field")
            for k in sorted(set(g) - {"query", "max", "min", "action", "name"})
        ]
        q = g.get("query")
        if not isinstance(q, str) or not q.strip() or len(q) > 2000:
            errors.append((f"{path}.query", "expected a PromQL expression"))
        bounds = [k for k in ("max", "min") if k in g]
        if len(bounds) != 1:
            errors.append((path, "give exactly one of max and min"))
        for k in bounds:
            v = g[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                errors.append((f"{path}.{k}", "expected a number"))
        action = g.get("action", "rollback")
        if action not in ("rollback", "pause"):
            errors.append((f"{path}.action", "expected rollback or pause"))
        out.append({**g, "action": action, "name": str(g.get("name") or q)})
    if errors:
        raise ValidationError(errors)
    return out


def breach(guard: dict[str, Any], value: float) -> str | None:
    """Why ``value`` breaches ``guard``, or None."""
    if "max" in guard and value > guard["max"]:
        return f"{guard['name']} = {value:g}, above {guard['max']:g}"
    if "min" in guard and value < guard["min"]:
        return f"{guard['name']} = {value:g}, below {guard['min']:g}"
    return None


async def query(http: httpx.AsyncClient, base_url: str, promql: str) -> float:
    """The one number ``promql`` yields now.

    Raises:
        PrometheusError: unreachable, an error answer, or not exactly one sample.
    """
    try:
        r = await http.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": promql})
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PrometheusError(f"Prometheus did not answer: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus refused the query: {body.get('error', r.status_code)}")
    data = body.get("data") or {}
    result = data.get("result")
    sample: Any
    if data.get("resultType") == "scalar":
        sample = result
    elif isinstance(result, list) and len(result) == 1:
        sample = result[0].get("value")
    else:
        n = len(result) if isinstance(result, list) else 0
        raise PrometheusError(f"the query gave {n} series; a guard needs exactly one")
    try:
        return float(sample[1])
    except (TypeError, ValueError, IndexError):
        raise PrometheusError(f"not a number: {sample!r}") from None
