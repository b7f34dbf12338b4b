"""Guards from Prometheus: one instant query, its value, and whether it breaches.

(What a guard is, and its parsing, is in ``release/guards.py``.)

Why so small: a guard is a PromQL expression that yields one number and a
bound; Prometheus does the statistics.  :func:`breach` is pure;
:func:`query` is the only I/O (Prometheus's HTTP API, ``/api/v1/query``).
A query that fails or yields nothing is *not* a breach (a Prometheus outage
must not roll back every release) but is recorded on the plan.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["PrometheusError", "breach", "query"]


class PrometheusError(Exception):
    """Prometheus did not answer the query with one number."""


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
