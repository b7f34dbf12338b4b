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

With ``stat: "mean"`` it compares the **mean value** of the event (a latency
tracked with ``track("latency-ms", ctx, 212.0)``), from each variation's
count, sum and sum of squares (the summaries carry all three), by a
one-sided **Welch's t-test**::

    m = sum / count,  v = (squares - sum^2 / count) / (count - 1)
    t = (m_new - m_old - margin) / sqrt(v_new / c_new + v_old / c_old)

with the Welch-Satterthwaite degrees of freedom and the t quantile from a
Cornish-Fisher expansion of the normal one (within 0.02 of the exact
quantile from 5 degrees of freedom, 0.001 from 10; ``min_samples`` counts events
here).
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
    "t_quantile",
    "tally",
]

MAX_GUARDS: Final = 10
MAX_NAME: Final = 100
#: Evaluations each variation needs before an event guard may breach.
DEFAULT_MIN_SAMPLES: Final = 1000
DEFAULT_CONFIDENCE: Final = 0.99
_PROM_FIELDS: Final = frozenset({"query", "max", "min", "action", "name"})
_EVENT_FIELDS: Final = frozenset(
    {"event", "stat", "margin", "min_samples", "confidence", "worse", "action", "name"}
)


@dataclass(frozen=True, slots=True)
class Tally:
    """One variation's counts since the baseline: evaluations, events, and the events'
    values' sum and sum of squares."""

    evaluations: int
    events: int
    total: float = 0.0
    squares: float = 0.0


@dataclass(frozen=True, slots=True)
class Reading:
    """A guard's value at one check, and why it breaches (``breach``) or None."""

    new: float
    old: float | None
    n: int
    breach: str | None
    stat: float | None = None  #: the test statistic, when there was enough data
    test: str = "z"  #: which: ``z`` (rates) or ``t`` (means)

    def as_json(self) -> dict[str, Any]:
        return {"new": self.new, "old": self.old, "n": self.n, self.test: self.stat}


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
    stat = g.get("stat", "rate")
    if stat not in ("rate", "mean"):
        errors.append((f"{path}.stat", "expected rate or mean"))
    out = {
        "kind": "event",
        "event": event,
        "stat": stat,
        "margin": 0.0,
        "min_samples": DEFAULT_MIN_SAMPLES,
        "confidence": DEFAULT_CONFIDENCE,
        "worse": g.get("worse", "higher"),
    }
    margin_max = 1.0 if stat != "mean" else 1e12
    for key, lo, hi in (("margin", 0.0, margin_max), ("confidence", 0.5, 0.999999)):
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
    out["name"] = str(g.get("name") or f"{event} {'mean' if stat == 'mean' else 'rate'}")
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
        name = g.get("name")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
            errors.append((f"{path}.name", f"expected a name of 1 to {MAX_NAME} characters"))
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


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher)."""
    z = NormalDist().inv_cdf(p)
    if not math.isfinite(df) or df > 1e7:
        return z
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _mean_reading(guard: dict[str, Any], new: Tally, old: Tally) -> Reading:
    m_new = new.total / new.events if new.events else 0.0
    m_old = old.total / old.events if old.events else None
    n = new.events + old.events
    if m_old is None or min(new.events, old.events) < max(2, guard["min_samples"]):
        return Reading(m_new, m_old, n, None, None, "t")

    def var(t: Tally, m: float) -> float:
        return max(0.0, (t.squares - t.events * m * m) / (t.events - 1))

    a, b = var(new, m_new) / new.events, var(old, m_old) / old.events
    if a + b == 0:
        return Reading(m_new, m_old, n, None, 0.0, "t")
    sign = 1.0 if guard["worse"] == "higher" else -1.0
    t = (sign * (m_new - m_old) - guard["margin"]) / math.sqrt(a + b)
    df = (a + b) ** 2 / (a * a / (new.events - 1) + b * b / (old.events - 1))
    critical = t_quantile(guard["confidence"], df)
    if t <= critical:
        return Reading(m_new, m_old, n, None, t, "t")
    why = (
        f"{guard['event']} mean {m_new:.4g} vs {m_old:.4g}, n = {n:,} "
        f"(t = {t:.2f} > {critical:.2f}, Welch)"
    )
    return Reading(m_new, m_old, n, why, t, "t")


def event_reading(guard: dict[str, Any], new: Tally, old: Tally) -> Reading:
    """The event's rate (or mean value) in each variation and whether new is worse than old,
    by the two-proportion z-test (or Welch's t-test)."""
    if guard.get("stat") == "mean":
        return _mean_reading(guard, new, old)
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
    return Tally(
        max(0, now.evaluations - then.evaluations),
        max(0, now.events - then.events),
        now.total - then.total,
        max(0.0, now.squares - then.squares),
    )
