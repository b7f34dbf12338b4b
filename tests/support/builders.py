"""Small builders for flag and segment documents, shared by every test.

Each returns a plain dict in the document format of ``docs/evaluation.md``
and adds only what you pass, so a test states exactly what it depends on::

    flag("beta", rules=[rule(clause("email", "ends_with", "@example.com"), variation=0)])
    flag("split", fallthrough=rollout(25, 75))
    segment("staff", included=["u1"])
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "clause",
    "flag",
    "prerequisite",
    "rollout",
    "rule",
    "segment",
    "segment_clause",
    "target",
]

_UNSET: Any = object()


def flag(
    key: str = "flag",
    on: bool = True,
    variations: list[Any] | None = None,
    fallthrough: int | dict[str, Any] = 0,
    *,
    off_variation: int | None = _UNSET,
    **fields: Any,
) -> dict[str, Any]:
    """A flag document; ``variations`` default to ``[True, False]``, ``off_variation`` to 1.

    ``fallthrough`` is a variation index or a ``rollout(...)`` (or any dict).
    Other document fields (``targets``, ``rules``, ``prerequisites``,
    ``salt``, ``version``, ``tags`` ...) pass through as keyword arguments.
    """
    if variations is None:
        variations = [True, False]
    if off_variation is _UNSET:
        off_variation = 1 if len(variations) > 1 else 0
    if isinstance(fallthrough, int):
        ft: dict[str, Any] = {"variation": fallthrough}
    elif "variations" in fallthrough:
        ft = {"rollout": fallthrough}
    else:
        ft = fallthrough
    return {
        "key": key,
        "on": on,
        "variations": variations,
        "off_variation": off_variation,
        "fallthrough": ft,
        **fields,
    }


def clause(attribute: str, op: str, *values: Any, negate: bool = False) -> dict[str, Any]:
    """A clause: ``clause("country", "in", "NL", "DE")``."""
    return {"attribute": attribute, "op": op, "values": list(values), "negate": negate}


def segment_clause(*keys: str, negate: bool = False) -> dict[str, Any]:
    """A ``segment_match`` clause on the given segment keys."""
    return {"op": "segment_match", "values": list(keys), "negate": negate}


def rollout(
    *weights: float, bucket_by: str | None = None, variations: list[int] | None = None
) -> dict[str, Any]:
    """A rollout from percentages: ``rollout(25, 75)`` → variation 0 at 25%, 1 at 75%.

    Percentages may have up to three decimals (weights are thousandths of a
    percent); ``variations`` picks the index of each slot (default 0, 1, ...).
    """
    indexes = variations if variations is not None else list(range(len(weights)))
    roll: dict[str, Any] = {
        "variations": [
            {"variation": v, "weight": round(w * 1000)}
            for v, w in zip(indexes, weights, strict=True)
        ]
    }
    if bucket_by is not None:
        roll["bucket_by"] = bucket_by
    return roll


def rule(
    *clauses: dict[str, Any],
    variation: int | None = None,
    rollout: dict[str, Any] | None = None,
    id: str | None = None,  # noqa: A002  (mirrors the document field)
) -> dict[str, Any]:
    """A rule serving ``variation`` (default 0) or ``rollout`` when all clauses match."""
    r: dict[str, Any] = {"clauses": list(clauses)}
    if id is not None:
        r["id"] = id
    if rollout is not None:
        r["rollout"] = rollout
    else:
        r["variation"] = 0 if variation is None else variation
    return r


def target(variation: int, *keys: str) -> dict[str, Any]:
    """An individual target entry: these context keys get ``variation``."""
    return {"variation": variation, "values": list(keys)}


def prerequisite(key: str, variation: int = 0) -> dict[str, Any]:
    """A prerequisite: flag ``key`` must be on and serve ``variation``."""
    return {"key": key, "variation": variation}


def segment(
    key: str = "segment",
    *,
    included: list[str] | None = None,
    excluded: list[str] | None = None,
    rules: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A segment document; ``rules`` are ``rule(...)``-like dicts (only clauses are used)."""
    seg_rules = [{k: v for k, v in r.items() if k in ("id", "clauses")} for r in rules or []]
    return {
        "key": key,
        "included": included or [],
        "excluded": excluded or [],
        "rules": seg_rules,
        **fields,
    }
