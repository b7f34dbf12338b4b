"""Validation of rules, what they serve and their clauses (flags' and segments').

Split from ``model.py`` (issue 11): these checks are the bulk of validation
and are shared by flags and segments; ``model.py`` keeps the documents'
top-level fields and the public entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from flagwire.core._checker import Checker, join, show
from flagwire.core.limits import KEY_RE, LIMITS, WEIGHT_TOTAL
from flagwire.core.operators import (
    DATE_OPS,
    NUMBER_OPS,
    OPERATORS,
    SEMVER_OPS,
    STRING_OPS,
    is_number,
    parse_semver,
    parse_timestamp,
    regex_problem,
)

__all__ = [
    "CLAUSE_FIELDS",
    "LD_ROLLOUT_FIELDS",
    "LD_SEGMENT_RULE_FIELDS",
    "RULE_FIELDS",
    "SEGMENT_RULE_FIELDS",
    "SERVE_FIELDS",
    "WEIGHTED_FIELDS",
    "check_rules",
    "check_serve",
]

RULE_FIELDS: Final = frozenset({"id", "description", "clauses", "variation", "rollout"})
SEGMENT_RULE_FIELDS: Final = frozenset({"id", "description", "clauses"})
#: A rule of a segment with LaunchDarkly semantics may hold only a share of its matches.
LD_SEGMENT_RULE_FIELDS: Final = frozenset({*SEGMENT_RULE_FIELDS, "weight", "bucket_by"})
CLAUSE_FIELDS: Final = frozenset({"attribute", "op", "values", "negate"})
ROLLOUT_FIELDS: Final = frozenset({"variations", "bucket_by"})
LD_ROLLOUT_FIELDS: Final = frozenset({*ROLLOUT_FIELDS, "seed"})
WEIGHTED_FIELDS: Final = frozenset({"variation", "weight"})
SERVE_FIELDS: Final = frozenset({"variation", "rollout"})


def check_rules(
    check: Checker,
    rules: list[Any],
    in_range: Callable[[Any, str], bool],
    *,
    segment: bool,
    ld: bool,
) -> None:
    ids: dict[str, int] = {}
    for i, rule in enumerate(rules):
        path = f"rules[{i}]"
        if not check.obj(rule, path):
            continue
        if segment:
            check.fields(rule, LD_SEGMENT_RULE_FIELDS if ld else SEGMENT_RULE_FIELDS, path)
            if ld:
                _segment_share(check, rule, path)
        else:
            check.fields(rule, RULE_FIELDS, path)
        if "id" in rule:
            rid = rule["id"]
            if check.text(rid, f"{path}.id", LIMITS.max_name_length, empty=False):
                if rid in ids:
                    check.err(f"{path}.id", f'duplicate rule id "{rid}" (also rules[{ids[rid]}])')
                ids.setdefault(rid, i)
        if "description" in rule:
            check.text(rule["description"], f"{path}.description", LIMITS.max_description_length)
        clauses = rule.get("clauses")
        if clauses is None:
            check.err(f"{path}.clauses", "required")
        elif check.array(clauses, f"{path}.clauses", LIMITS.max_clauses, min_len=1):
            for j, clause in enumerate(clauses):
                _clause(check, clause, f"{path}.clauses[{j}]", segment=segment)
        if not segment:
            check_serve(check, rule, path, in_range, whole=False, ld=ld)


def _segment_share(check: Checker, rule: dict[str, Any], path: str) -> None:
    """``weight`` and ``bucket_by`` of a LaunchDarkly segment rule (fields checked before)."""
    if "weight" in rule:
        w = rule["weight"]
        if w.__class__ is not int or not 0 <= w <= WEIGHT_TOTAL:
            check.err(
                f"{path}.weight",
                f"expected an integer 0..{WEIGHT_TOTAL} (thousandths of a percent), got {show(w)}",
            )
    if "bucket_by" in rule:
        check.text(rule["bucket_by"], f"{path}.bucket_by", LIMITS.max_name_length, empty=False)


def check_serve(
    check: Checker,
    obj: Any,
    path: str,
    in_range: Callable[[Any, str], bool],
    *,
    whole: bool,
    ld: bool,
) -> None:
    """Check what a rule or the fallthrough serves: exactly one of variation/rollout."""
    if not check.obj(obj, path, "an object with a variation or a rollout"):
        return
    if whole:
        check.fields(obj, SERVE_FIELDS, path)
    has_var, has_roll = "variation" in obj, "rollout" in obj
    if has_var == has_roll:
        check.err(
            path,
            "must serve exactly one of variation or rollout" + (", not both" if has_var else ""),
        )
    if has_var:
        in_range(obj["variation"], join(path, "variation"))
    if has_roll:
        _rollout(check, obj["rollout"], join(path, "rollout"), in_range, ld=ld)


def _rollout(
    check: Checker, roll: Any, path: str, in_range: Callable[[Any, str], bool], *, ld: bool
) -> None:
    if not check.obj(roll, path):
        return
    check.fields(roll, LD_ROLLOUT_FIELDS if ld else ROLLOUT_FIELDS, path)
    if "seed" in roll and roll["seed"].__class__ is not int:
        check.err(f"{path}.seed", f"expected an integer, got {show(roll['seed'])}")
    roll.setdefault("bucket_by", "key")
    check.text(roll["bucket_by"], f"{path}.bucket_by", LIMITS.max_name_length, empty=False)
    slots = roll.get("variations")
    if slots is None:
        check.err(f"{path}.variations", "required")
        return
    if not check.array(slots, f"{path}.variations", LIMITS.max_variations, min_len=1):
        return
    total, ok = 0, True
    for i, slot in enumerate(slots):
        spath = f"{path}.variations[{i}]"
        if not check.obj(slot, spath):
            ok = False
            continue
        check.fields(slot, WEIGHTED_FIELDS, spath)
        if "variation" not in slot:
            check.err(f"{spath}.variation", "required")
        else:
            in_range(slot["variation"], f"{spath}.variation")
        weight = slot.get("weight")
        if weight.__class__ is not int or not 0 <= weight <= WEIGHT_TOTAL:
            check.err(
                f"{spath}.weight",
                f"expected an integer 0..{WEIGHT_TOTAL} (thousandths of "
                f"a percent), got {show(weight)}",
            )
            ok = False
        else:
            total += weight
    # LaunchDarkly lets weights sum to anything and serves the last slot past
    # their total; flags imported from it keep that (docs/evaluation.md).
    if ok and total != WEIGHT_TOTAL and not ld:
        check.err(
            f"{path}.variations",
            f"weights sum to {total}; they must sum to "
            f"{WEIGHT_TOTAL} (100% in thousandths of a percent)",
        )


def _clause(check: Checker, clause: Any, path: str, *, segment: bool) -> None:
    if not check.obj(clause, path):
        return
    check.fields(clause, CLAUSE_FIELDS, path)
    op = clause.get("op")
    if op is None:
        check.err(f"{path}.op", "required")
    elif op not in OPERATORS:
        check.err(
            f"{path}.op", f"unknown operator {show(op)}; expected one of {', '.join(OPERATORS)}"
        )
        op = None
    if segment and op == "segment_match":
        check.err(f"{path}.op", "segment_match is not allowed inside a segment")
    if "attribute" in clause or op != "segment_match":
        if "attribute" not in clause:
            check.err(f"{path}.attribute", "required")
        else:
            check.text(
                clause["attribute"], f"{path}.attribute", LIMITS.max_name_length, empty=False
            )
    clause.setdefault("negate", False)
    if clause["negate"] is not True and clause["negate"] is not False:
        check.err(f"{path}.negate", f"expected true or false, got {show(clause['negate'])}")
    values = clause.get("values")
    if values is None:
        check.err(f"{path}.values", "required")
        return
    if not check.array(values, f"{path}.values", LIMITS.max_clause_values, min_len=1):
        return
    if op is not None:
        for i, value in enumerate(values):
            problem = _value_problem(op, value)
            if problem:
                check.err(f"{path}.values[{i}]", problem)
            elif op == "matches":
                check.patterns.append((f"{path}.values[{i}]", value))


def _value_problem(op: str, value: Any) -> str | None:
    """Why ``value`` cannot be a value of operator ``op``, or None if it can."""
    if op == "in":
        if isinstance(value, str) or value is True or value is False or is_number(value):
            return None
        return f"expected a string, number or boolean, got {show(value)}"
    if op in STRING_OPS:
        if not isinstance(value, str):
            return f"expected a string, got {show(value)}"
        if op == "matches":
            if len(value) > LIMITS.max_regex_length:
                return (
                    f"regular expression is {len(value)} characters; "
                    f"limit {LIMITS.max_regex_length}"
                )
            return regex_problem(value)
        return None
    if op in NUMBER_OPS:
        return None if is_number(value) else f"expected a number, got {show(value)}"
    if op in DATE_OPS:
        if parse_timestamp(value) is None:
            return (
                f"expected an RFC 3339 timestamp with a zone (2024-05-01T12:00:00Z) or "
                f"epoch milliseconds, got {show(value)}"
            )
        return None
    if op in SEMVER_OPS:
        if parse_semver(value) is None:
            return f"expected a semantic version such as 1.2.3 or 2.0.0-rc.1, got {show(value)}"
        return None
    # segment_match
    if isinstance(value, str) and KEY_RE.match(value):
        return None
    return f"expected a segment key, got {show(value)}"
