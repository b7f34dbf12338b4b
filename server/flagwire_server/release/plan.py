"""Release plans, the pure part: stages, templates, and the flag each stage makes.

Why pure: the promise of a plan is that nobody is reshuffled — a context that
got the new variation keeps it as the plan advances, pauses and resumes — and
that promise lives entirely in how a stage's flag is built from the flag as it
was before the plan.  So it is a function of (flag before, plan, stage), tested
by property with no Redis.

A stage serves the new variation to

* the contexts in the stage's segments and every earlier stage's (a rule
  ``release:<plan id>`` put first, with one ``segment_match`` clause), and
* ``percent`` of the rest, by the flag's fallthrough: a rollout whose first
  slot is the new variation.  Bucketing walks slots in order from bucket 0
  (``core/bucketing.py``), so with the same salt and ``bucket_by`` a larger
  first slot keeps every context it had: each stage is a superset of the one
  before.  The salt is never changed.

Stages must not shrink: percentages never go down and segments only add up.
The plan's last stage is usually 100%; when the plan completes the flag is
written once more, its fallthrough serving the new variation (no rollout left).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from flagwire.core.errors import ValidationError
from flagwire_server.release.guards import parse_guards

__all__ = [
    "TEMPLATES",
    "flag_at_stage",
    "flag_completed",
    "old_variation",
    "parse_stages",
    "rule_id",
]

WEIGHT_TOTAL: Final = 100_000
MAX_STAGES: Final = 20
MAX_HOLD: Final = 30 * 86_400.0

#: Built-in templates; an environment's own templates (same shape) are stored beside them.
TEMPLATES: Final[dict[str, list[dict[str, Any]]]] = {
    "standard": [
        {"name": "staff", "segments": ["staff"], "percent": 0, "hold": 3600},
        {"name": "1%", "percent": 1, "hold": 3600},
        {"name": "10%", "percent": 10, "hold": 3600},
        {"name": "50%", "percent": 50, "hold": 3600},
        {"name": "100%", "percent": 100, "hold": 0},
    ],
}


def rule_id(plan_id: str) -> str:
    return f"release:{plan_id}"


def parse_stages(raw: object) -> list[dict[str, Any]]:
    """Checked stages: ``name``, ``segments``, ``percent`` (0-100), ``hold`` (s), ``approval``,
    ``guards`` (checked while the stage is current; ``release/guards.py``).

    Raises:
        ValidationError: every problem, with its path (``stages[2].percent``).
    """
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STAGES:
        raise ValidationError([("stages", f"expected a list of 1 to {MAX_STAGES} stages")])
    errors: list[tuple[str, str]] = []
    out: list[dict[str, Any]] = []
    last_percent = 0.0
    for i, st in enumerate(raw):
        path = f"stages[{i}]"
        if not isinstance(st, dict):
            errors.append((path, "expected an object"))
            continue
        unknown = sorted(set(st) - {"name", "segments", "percent", "hold", "approval", "guards"})
        errors += [(f"{path}.{k}", "unknown field") for k in unknown]
        segs = st.get("segments", [])
        if not isinstance(segs, list) or not all(isinstance(s, str) and s for s in segs):
            errors.append((f"{path}.segments", "expected a list of segment keys"))
            segs = []
        pct = st.get("percent", 0)
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100:
            errors.append((f"{path}.percent", "expected a number from 0 to 100"))
            pct = 0
        elif abs(round(pct * 1000) - pct * 1000) > 1e-6:
            errors.append((f"{path}.percent", "at most three decimals"))
        elif pct < last_percent:
            errors.append((f"{path}.percent", f"below the stage before ({last_percent:g}%)"))
        hold = st.get("hold", 0)
        if isinstance(hold, bool) or not isinstance(hold, int | float) or not 0 <= hold <= MAX_HOLD:
            errors.append((f"{path}.hold", "expected seconds from 0 to 30 days"))
            hold = 0
        approval = st.get("approval", False)
        if not isinstance(approval, bool):
            errors.append((f"{path}.approval", "expected true or false"))
        try:
            guards = parse_guards(st.get("guards"), f"{path}.guards")
        except ValidationError as exc:
            errors += exc.errors
            guards = []
        if not segs and pct == 0 and i == len(raw) - 1:
            errors.append((path, "the last stage serves nobody"))
        last_percent = max(last_percent, float(pct))
        out.append(
            {
                "name": str(st.get("name") or (f"{pct:g}%" if not segs else "+".join(segs))),
                "segments": list(segs),
                "percent": float(pct),
                "hold": float(hold),
                "approval": approval is True,
                "guards": guards,
            }
        )
    if errors:
        raise ValidationError(errors)
    return out


def old_variation(flag: dict[str, Any]) -> int:
    """The variation everyone gets before the plan: the flag's fixed fallthrough.

    Raises:
        ValidationError: the flag is off or its fallthrough is already a rollout
            (a plan starts from one variation, so "old" means one thing).
    """
    errors: list[tuple[str, str]] = []
    if flag.get("on") is not True:
        errors.append(("on", "turn the flag on before releasing it"))
    ft = flag.get("fallthrough") or {}
    if not isinstance(ft.get("variation"), int) or "rollout" in ft:
        errors.append(("fallthrough", "a plan starts from a fallthrough serving one variation"))
    if any(str(r.get("id", "")).startswith("release:") for r in flag.get("rules") or []):
        errors.append(("rules", "the flag still has a release rule of another plan"))
    if errors:
        raise ValidationError(errors)
    return int(ft["variation"])


def flag_at_stage(before: dict[str, Any], plan: dict[str, Any], stage: int) -> dict[str, Any]:
    """The flag document of ``plan`` at stage index ``stage``, built from ``before``."""
    stages = plan["stages"]
    new, old = int(plan["variation"]), int(plan["old_variation"])
    doc = copy.deepcopy(before)
    segments = list(dict.fromkeys(s for st in stages[: stage + 1] for s in st["segments"]))
    rules = [r for r in doc.get("rules") or [] if r.get("id") != rule_id(plan["id"])]
    if segments:
        rules.insert(
            0,
            {
                "id": rule_id(plan["id"]),
                "clauses": [{"op": "segment_match", "values": segments}],
                "variation": new,
            },
        )
    doc["rules"] = rules
    weight = round(stages[stage]["percent"] * 1000)
    bucket_by = (before.get("fallthrough") or {}).get("bucket_by")
    rollout: dict[str, Any] = {
        "variations": [
            {"variation": new, "weight": weight},
            {"variation": old, "weight": WEIGHT_TOTAL - weight},
        ]
    }
    if bucket_by:
        rollout["bucket_by"] = bucket_by
    doc["fallthrough"] = {"rollout": rollout}
    return doc


def flag_completed(before: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The flag after a completed plan: the last stage, with the fallthrough serving new.

    The plan's segment rule stays: it comes before the flag's own rules, so a
    context in a release segment that one of those rules would send to the old
    variation got the new one during the plan, and must keep it.
    """
    doc = flag_at_stage(before, plan, len(plan["stages"]) - 1)
    doc["fallthrough"] = {"variation": int(plan["variation"])}
    return doc
