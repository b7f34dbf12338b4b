"""Release-plan guards, the pure part: what a guard is, and whether a reading breaches it.

Two kinds, told apart by their fields:

* **Prometheus** (``query`` + ``max``/``min``): one number, compared with a
  bound; Prometheus does the statistics (``release/prometheus.py``).
* **Client events** (``event``): the clients' ``track`` counts per variation of
  the plan's flag (fleet insight, ``store/insight.py``), the contexts served the
  new variation against those served the old one, since the guard's baseline
  (the plan's start for a plan's guard, the stage's start for a stage's).

An event guard compares a **rate**: events per evaluation of each variation,
``p = events / evaluations``.  Counted with ``track`` at most once per
evaluation it is a proportion, and the test is the one-sided **two-proportion
z-test** with the pooled proportion::

    p = (x_new + x_old) / (n_new + n_old)
    z = (p_new - p_old - margin) / sqrt(p (1 - p) (1/n_new + 1/n_old))

It breaches when ``z`` exceeds the normal quantile of ``confidence`` (default
0.99: z > 2.326) and both variations have at least ``min_samples``
evaluations; below that it only reports "not enough data".  ``worse:
"lower"`` flips the sign (for an event that should not fall, a purchase).
Why only rates: a client summary carries per event a count and a sum, not a
sum of squares, so a test on means (Welch's t) has no variance to use; the
rate on counts is the test the data supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE

__all__ = [
    "MAX_GUARDS",
    "Reading",
    "Tally",
    "event_reading",
    "parse_guards",
    "tally",
]

MAX_GUARDS: Final = 10
#: Evaluations each variation needs before an event guard may breach.
DEFAULT_MIN_SAMPLES: Final = 1000
DEFAULT_CONFIDENCE: Final = 0.99
_PROM_FIELDS: Final = frozenset({"query", "max", "min", "action", "name"})
_EVENT_FIELDS: Final = frozenset(
    {"event", "margin", "min_samples", "confidence", "worse", "action", "name"}
)


@dataclass(frozen=True, slots=True)
class Tally:
    """One variation's counts since the baseline: evaluations and events."""

    evaluations: int
    events: int


@dataclass(frozen=True, slots=True)
class Reading:
    """A guard's value at one check, and why it breaches (``breach``) or None."""

    new: float
    old: float | None
    n: int
    breach: str | None
    stat: float | None = None  #: the test statistic (z), when there was enough data

    def as_json(self) -> dict[str, Any]:
        return {"new": self.new, "old": self.old, "n": self.n, "z": self.stat}


def _number(g: dict[str, Any], key: str, lo: float, hi: float) -> str | None:
    v = g.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        return f"expected a number from {lo:g} to {hi:g}"
    return None


def _parse_event(g: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> dict[str, Any]:
    errors += [(f"{path}.{k}", "unknown field") for k in sorted(set(g) - _EVENT_FIELDS)]
    event = g.get("event")
    if not isinstance(event, str) or not KEY_RE.match(event):
        errors.append((f"{path}.event", "expected the name of a tracked event"))
    out = {
        "kind": "event",
        "event": event,
        "margin": 0.0,
        "min_samples": DEFAULT_MIN_SAMPLES,
        "confidence": DEFAULT_CONFIDENCE,
        "worse": g.get("worse", "higher"),
    }
    for key, lo, hi in (("margin", 0.0, 1.0), ("confidence", 0.5, 0.999999)):
        if key in g:
            why = _number(g, key, lo, hi)
            if why:
                errors.append((f"{path}.{key}", why))
            else:
                out[key] = float(g[key])
    if "min_samples" in g:
        n = g["min_samples"]
        if type(n) is not int or not 1 <= n <= 10**9:
            errors.append((f"{path}.min_samples", "expected a whole number from 1"))
        else:
            out["min_samples"] = n
    if out["worse"] not in ("higher", "lower"):
        errors.append((f"{path}.worse", "expected higher or lower"))
    out["name"] = str(g.get("name") or f"{event} rate")
    return out


def _parse_prometheus(
    g: dict[str, Any], path: str, errors: list[tuple[str, str]]
) -> dict[str, Any]:
    errors += [(f"{path}.{k}", "unknown field") for k in sorted(set(g) - _PROM_FIELDS)]
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
    return {**g, "kind": "prometheus", "name": str(g.get("name") or q)}


def parse_guards(raw: object, where: str = "guards") -> list[dict[str, Any]]:
    """Checked guards: ``{"event": ...}`` (client events) or ``{"query": ...}`` (Prometheus).

    Each gets ``kind``, ``name`` and ``action`` (``rollback``, the default, or ``pause``).

    Raises:
        ValidationError: every problem, with its path (``stages[1].guards[0].event``).
    """
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_GUARDS:
        raise ValidationError([(where, f"expected a list of at most {MAX_GUARDS} guards")])
    errors: list[tuple[str, str]] = []
    out = []
    for i, g in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(g, dict):
            errors.append((path, "expected an object"))
            continue
        if "event" in g:
            guard = _parse_event(g, path, errors)
        elif "query" in g:
            guard = _parse_prometheus(g, path, errors)
        else:
            errors.append((path, "expected event (client events) or query (Prometheus)"))
            continue
        action = g.get("action", "rollback")
        if action not in ("rollback", "pause"):
            errors.append((f"{path}.action", "expected rollback or pause"))
        guard["action"] = action
        out.append(guard)
    if errors:
        raise ValidationError(errors)
    return out


def _pct(p: float) -> str:
    return f"{p * 100:.{1 if p >= 0.001 else 3}f}%"


def event_reading(guard: dict[str, Any], new: Tally, old: Tally) -> Reading:
    """The event rate of each variation and whether new is worse than old, by the z-test."""
    p_new = min(new.events, new.evaluations) / new.evaluations if new.evaluations else 0.0
    p_old = min(old.events, old.evaluations) / old.evaluations if old.evaluations else None
    n = new.evaluations + old.evaluations
    if p_old is None or min(new.evaluations, old.evaluations) < guard["min_samples"]:
        return Reading(p_new, p_old, n, None)
    x = min(new.events, new.evaluations) + min(old.events, old.evaluations)
    pooled = x / n
    sign = 1.0 if guard["worse"] == "higher" else -1.0
    diff = sign * (p_new - p_old) - guard["margin"]
    se = math.sqrt(pooled * (1 - pooled) * (1 / new.evaluations + 1 / old.evaluations))
    if se == 0:
        # Every evaluation of both had the event, or none did: no difference to test.
        return Reading(p_new, p_old, n, None, 0.0)
    z = diff / se
    critical = NormalDist().inv_cdf(guard["confidence"])
    if z <= critical:
        return Reading(p_new, p_old, n, None, z)
    why = (
        f"{guard['event']} rate {_pct(p_new)} vs {_pct(p_old)}, n = {n:,} "
        f"(z = {z:.2f} > {critical:.2f})"
    )
    return Reading(p_new, p_old, n, why, z)


def tally(counts: dict[int, Tally], base: dict[int, Tally], variation: int) -> Tally:
    """``variation``'s counts now minus at the baseline."""
    now, then = counts.get(variation, Tally(0, 0)), base.get(variation, Tally(0, 0))
    return Tally(max(0, now.evaluations - then.evaluations), max(0, now.events - then.events))
