"""The flag and segment document model: validation, normalisation and limits.

A document is plain JSON (see ``docs/evaluation.md`` for every field).
:func:`validate_flag` and :func:`validate_segment` check one strictly and
return a normalised copy with every default filled in, so that the compiler
(``_compile``) and everything downstream can rely on the full shape.

Strict means unknown fields are errors: a typo such as ``"onn": true`` must
not silently leave a flag off.  All problems are collected, each with the
JSON path where it was found, and raised together in one ``ValidationError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from flagwire.core.errors import ValidationError
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
    regex_budget_overrun,
    regex_problem,
)

__all__ = ["LAUNCHDARKLY", "SEMANTICS", "semantics_of", "validate_flag", "validate_segment"]

#: The ``semantics`` of flags and segments imported from LaunchDarkly (``docs/evaluation.md``).
LAUNCHDARKLY: Final = "launchdarkly"
#: Every value ``semantics`` may take; the first is the default.
SEMANTICS: Final = ("flagwire", LAUNCHDARKLY)

_SERVER_FIELDS: Final = ("version", "created_at", "updated_at", "updated_by")
_FLAG_FIELDS: Final = frozenset(
    {
        "key",
        "name",
        "description",
        "tags",
        "on",
        "variations",
        "off_variation",
        "targets",
        "rules",
        "fallthrough",
        "prerequisites",
        "salt",
        "semantics",
        "client_side",
        *_SERVER_FIELDS,
    }
)
_SEGMENT_FIELDS: Final = frozenset(
    {
        "key",
        "name",
        "description",
        "tags",
        "included",
        "excluded",
        "rules",
        "semantics",
        "salt",
        *_SERVER_FIELDS,
    }
)
_RULE_FIELDS: Final = frozenset({"id", "description", "clauses", "variation", "rollout"})
_SEGMENT_RULE_FIELDS: Final = frozenset({"id", "description", "clauses"})
#: A rule of a segment with LaunchDarkly semantics may hold only a share of its matches.
_LD_SEGMENT_RULE_FIELDS: Final = frozenset({*_SEGMENT_RULE_FIELDS, "weight", "bucket_by"})
_CLAUSE_FIELDS: Final = frozenset({"attribute", "op", "values", "negate"})
_ROLLOUT_FIELDS: Final = frozenset({"variations", "bucket_by"})
_LD_ROLLOUT_FIELDS: Final = frozenset({*_ROLLOUT_FIELDS, "seed"})
_WEIGHTED_FIELDS: Final = frozenset({"variation", "weight"})
_TARGET_FIELDS: Final = frozenset({"variation", "values"})
_PREREQ_FIELDS: Final = frozenset({"key", "variation"})
_SERVE_FIELDS: Final = frozenset({"variation", "rollout"})


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _kind_of(value: Any) -> str | None:
    """The variation kind of a value: bool, string, number, json; None if unusable."""
    if value is True or value is False:
        return "bool"
    if isinstance(value, str):
        return "string"
    if is_number(value):
        return "number"
    if isinstance(value, dict | list):
        return "json"
    return None


class _Checker:
    """Collects ``(path, message)`` problems while walking one document."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.patterns: list[tuple[str, str]] = []  #: (path, pattern) of every ``matches`` value

    def err(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def fields(self, obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
        for name in obj:
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), sorted(allowed), n=1)
                more = f'; did you mean "{hint[0]}"?' if hint else ""
                self.err(_join(path, str(name)), f'unknown field "{name}"{more}')

    def obj(self, value: Any, path: str, what: str = "an object") -> bool:
        if isinstance(value, dict):
            return True
        self.err(path, f"expected {what}, got {_show(value)}")
        return False

    def array(self, value: Any, path: str, limit: int, *, min_len: int = 0) -> bool:
        if not isinstance(value, list):
            self.err(path, f"expected an array, got {_show(value)}")
            return False
        if len(value) > limit:
            self.err(path, f"too many items: {len(value)} > limit {limit}")
            return False
        if len(value) < min_len:
            self.err(path, f"expected at least {min_len} item{'s' if min_len > 1 else ''}")
            return False
        return True

    def text(self, value: Any, path: str, limit: int, *, empty: bool = True) -> bool:
        if not isinstance(value, str):
            self.err(path, f"expected a string, got {_show(value)}")
        elif len(value) > limit:
            self.err(path, f"too long: {len(value)} characters > limit {limit}")
        elif not empty and not value:
            self.err(path, "must not be empty")
        else:
            return True
        return False

    def key(self, value: Any, path: str) -> bool:
        if isinstance(value, str) and KEY_RE.match(value):
            return True
        self.err(
            path,
            f"{_show(value)} is not a valid key (lowercase letters, digits, '.', '_', "
            "'-'; starting with a letter or digit; at most 128 characters)",
        )
        return False

    def index(self, value: Any, path: str, count: int) -> bool:
        if value.__class__ is not int:
            self.err(path, f"expected a variation index (integer), got {_show(value)}")
        elif not 0 <= value < count:
            self.err(
                path,
                f"variation index {value} out of range; the flag has {count} "
                f"variation{'s' if count != 1 else ''} (0..{count - 1})",
            )
        else:
            return True
        return False

    def raise_if_any(self) -> None:
        if not self.errors and self.patterns:
            at = regex_budget_overrun([pattern for _, pattern in self.patterns])
            if at is not None:
                self.err(
                    self.patterns[at][0],
                    f"the document's matches patterns up to this one need more than "
                    f"{LIMITS.max_regex_memory} bytes compiled together (RE2's budget); "
                    "use fewer or simpler patterns (counted repetition such as {1000} is costly)",
                )
        if self.errors:
            errors = self.errors[: LIMITS.max_errors]
            if len(self.errors) > LIMITS.max_errors:
                errors.append(("", f"... and {len(self.errors) - LIMITS.max_errors} more problems"))
            raise ValidationError(errors)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _prepare(doc: Any, what: str) -> tuple[_Checker, dict[str, Any]]:
    """Check shape and size, and return a private deep copy to normalise in place."""
    if not isinstance(doc, dict):
        raise ValidationError([("", f"a {what} document must be a JSON object, got {_show(doc)}")])
    try:
        raw = orjson.dumps(doc)
    except TypeError as exc:
        raise ValidationError([("", f"the {what} document is not plain JSON: {exc}")]) from None
    if len(raw) > LIMITS.max_document_bytes:
        raise ValidationError(
            [("", f"document is {len(raw)} bytes; limit {LIMITS.max_document_bytes}")]
        )
    copy: dict[str, Any] = orjson.loads(raw)
    return _Checker(), copy


def semantics_of(d: dict[str, Any]) -> str:
    """The evaluation rules a validated document asked for (absent means flagwire's)."""
    value: str = d.get("semantics", SEMANTICS[0])
    return value


def _semantics(check: _Checker, d: dict[str, Any]) -> bool:
    """Check ``semantics`` (kept out of the normalised copy when absent); True for LaunchDarkly."""
    if "semantics" not in d:
        return False
    if d["semantics"] not in SEMANTICS:
        check.err(
            "semantics",
            f"expected one of {', '.join(map(repr, SEMANTICS))}, got {_show(d['semantics'])}",
        )
        return False
    return bool(d["semantics"] == LAUNCHDARKLY)


def _common(check: _Checker, d: dict[str, Any], what: str) -> None:
    """Fields flags and segments share: key, name, description, tags, server fields."""
    check.fields(d, _FLAG_FIELDS if what == "flag" else _SEGMENT_FIELDS, "")
    if "key" not in d:
        check.err("key", "required")
    else:
        check.key(d["key"], "key")
    d.setdefault("name", d.get("key") if isinstance(d.get("key"), str) else "")
    check.text(d["name"], "name", LIMITS.max_name_length)
    d.setdefault("description", "")
    check.text(d["description"], "description", LIMITS.max_description_length)
    tags = d.setdefault("tags", [])
    if check.array(tags, "tags", LIMITS.max_tags):
        for i, tag in enumerate(tags):
            check.text(tag, f"tags[{i}]", LIMITS.max_tag_length, empty=False)
        texts = [t for t in tags if isinstance(t, str)]
        if len(set(texts)) != len(texts):
            check.err("tags", "duplicate tags")
    if "version" in d and (d["version"].__class__ is not int or d["version"] < 0):
        check.err("version", f"expected a non-negative integer, got {_show(d['version'])}")
    for name in _SERVER_FIELDS[1:]:
        if name in d and not (d[name] is None or isinstance(d[name], str) or is_number(d[name])):
            check.err(name, f"expected a string or a number, got {_show(d[name])}")


def validate_flag(doc: object) -> dict[str, Any]:
    """Validate a flag document and return a normalised deep copy.

    Defaults filled in: ``name`` (the key), ``description`` (""), ``tags``,
    ``targets``, ``rules``, ``prerequisites`` ([]), ``on`` (false),
    ``off_variation`` (null: an off flag serves the caller's default),
    ``salt`` (the key), clause ``negate`` (false), rollout ``bucket_by`` ("key").
    ``client_side`` (whether client-side keys may evaluate the flag through OFREP)
    is optional; absent means false.

    Raises:
        ValidationError: listing every problem as ``(json path, message)``.
    """
    check, d = _prepare(doc, "flag")
    _common(check, d, "flag")
    key = d.get("key")
    ld = _semantics(check, d)

    d.setdefault("on", False)
    if d["on"] is not True and d["on"] is not False:
        check.err("on", f"expected true or false, got {_show(d['on'])}")

    count = 0
    variations = d.get("variations")
    if variations is None:
        check.err("variations", "required")
    elif check.array(variations, "variations", LIMITS.max_variations, min_len=1):
        count = len(variations)
        kinds = [_kind_of(v) for v in variations]
        for i, kind in enumerate(kinds):
            if kind is None:
                check.err(
                    f"variations[{i}]",
                    f"not a boolean, string, number, object or array: {_show(variations[i])}",
                )
        if kinds[0] is not None:
            for i, kind in enumerate(kinds):
                if kind is not None and kind != kinds[0]:
                    check.err(
                        f"variations[{i}]",
                        f"is a {kind} but variations[0] is a "
                        f"{kinds[0]}; all variations must be one kind",
                    )
    in_range: Callable[[Any, str], bool] = (
        (lambda v, p: check.index(v, p, count)) if count else (lambda v, p: _is_index(check, v, p))
    )

    d.setdefault("off_variation", None)
    if d["off_variation"] is not None:
        in_range(d["off_variation"], "off_variation")

    targets = d.setdefault("targets", [])
    if check.array(targets, "targets", LIMITS.max_targets):
        for i, target in enumerate(targets):
            path = f"targets[{i}]"
            if not check.obj(target, path):
                continue
            check.fields(target, _TARGET_FIELDS, path)
            if "variation" not in target:
                check.err(f"{path}.variation", "required")
            else:
                in_range(target["variation"], f"{path}.variation")
            values = target.get("values")
            if values is None:
                check.err(f"{path}.values", "required")
            elif check.array(values, f"{path}.values", LIMITS.max_target_values):
                _strings(check, values, f"{path}.values", "a context key (string)")

    rules = d.setdefault("rules", [])
    if check.array(rules, "rules", LIMITS.max_rules):
        _rules(check, rules, in_range, segment=False, ld=ld)

    if "fallthrough" not in d:
        check.err("fallthrough", "required: an object with a variation or a rollout")
    else:
        _serve(check, d["fallthrough"], "fallthrough", in_range, whole=True, ld=ld)

    prereqs = d.setdefault("prerequisites", [])
    if check.array(prereqs, "prerequisites", LIMITS.max_prerequisites):
        seen: set[str] = set()
        for i, pre in enumerate(prereqs):
            path = f"prerequisites[{i}]"
            if not check.obj(pre, path):
                continue
            check.fields(pre, _PREREQ_FIELDS, path)
            pkey = pre.get("key")
            if pkey is None:
                check.err(f"{path}.key", "required")
            elif check.key(pkey, f"{path}.key"):
                if pkey == key:
                    check.err(f"{path}.key", "a flag cannot be its own prerequisite")
                elif pkey in seen:
                    check.err(f"{path}.key", f'duplicate prerequisite "{pkey}"')
                seen.add(pkey)
            pvar = pre.get("variation")
            if pvar is None:
                check.err(f"{path}.variation", "required")
            elif pvar.__class__ is not int or pvar < 0:
                check.err(
                    f"{path}.variation",
                    f"expected a variation index of the prerequisite flag, got {_show(pvar)}",
                )

    d.setdefault("salt", key if isinstance(key, str) else "")
    check.text(d["salt"], "salt", LIMITS.max_name_length, empty=False)
    # Absent means false (documents written before the field existed stay as they were).
    if "client_side" in d and d["client_side"] is not True and d["client_side"] is not False:
        check.err("client_side", f"expected true or false, got {_show(d['client_side'])}")
    check.raise_if_any()
    return d


def _is_index(check: _Checker, value: Any, path: str) -> bool:
    """Without valid variations only the type of an index can be checked."""
    if value.__class__ is int and value >= 0:
        return True
    check.err(path, f"expected a variation index (integer), got {_show(value)}")
    return False


def validate_segment(doc: object) -> dict[str, Any]:
    """Validate a segment document and return a normalised deep copy.

    Defaults filled in: ``name`` (the key), ``description``, ``tags``,
    ``included``, ``excluded``, ``rules`` and clause ``negate``.

    Raises:
        ValidationError: listing every problem as ``(json path, message)``.
    """
    check, d = _prepare(doc, "segment")
    _common(check, d, "segment")
    ld = _semantics(check, d)
    if "salt" in d:
        if ld:
            check.text(d["salt"], "salt", LIMITS.max_name_length, empty=False)
        else:
            check.err("salt", 'a segment has a salt only with "semantics": "launchdarkly"')
    for name in ("included", "excluded"):
        values = d.setdefault(name, [])
        if check.array(values, name, LIMITS.max_segment_values):
            _strings(check, values, name, "a context key (string)")
    rules = d.setdefault("rules", [])
    if check.array(rules, "rules", LIMITS.max_rules):
        _rules(check, rules, lambda v, p: True, segment=True, ld=ld)
    check.raise_if_any()
    return d


def _strings(check: _Checker, values: Iterable[Any], path: str, what: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            check.err(f"{path}[{i}]", f"expected {what}, got {_show(v)}")


def _rules(
    check: _Checker,
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
            check.fields(rule, _LD_SEGMENT_RULE_FIELDS if ld else _SEGMENT_RULE_FIELDS, path)
            if ld:
                _segment_share(check, rule, path)
        else:
            check.fields(rule, _RULE_FIELDS, path)
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
            _serve(check, rule, path, in_range, whole=False, ld=ld)


def _segment_share(check: _Checker, rule: dict[str, Any], path: str) -> None:
    """``weight`` and ``bucket_by`` of a LaunchDarkly segment rule (fields checked before)."""
    if "weight" in rule:
        w = rule["weight"]
        if w.__class__ is not int or not 0 <= w <= WEIGHT_TOTAL:
            check.err(
                f"{path}.weight",
                f"expected an integer 0..{WEIGHT_TOTAL} (thousandths of a percent), got {_show(w)}",
            )
    if "bucket_by" in rule:
        check.text(rule["bucket_by"], f"{path}.bucket_by", LIMITS.max_name_length, empty=False)


def _serve(
    check: _Checker,
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
        check.fields(obj, _SERVE_FIELDS, path)
    has_var, has_roll = "variation" in obj, "rollout" in obj
    if has_var == has_roll:
        check.err(
            path,
            "must serve exactly one of variation or rollout" + (", not both" if has_var else ""),
        )
    if has_var:
        in_range(obj["variation"], _join(path, "variation"))
    if has_roll:
        _rollout(check, obj["rollout"], _join(path, "rollout"), in_range, ld=ld)


def _rollout(
    check: _Checker, roll: Any, path: str, in_range: Callable[[Any, str], bool], *, ld: bool
) -> None:
    if not check.obj(roll, path):
        return
    check.fields(roll, _LD_ROLLOUT_FIELDS if ld else _ROLLOUT_FIELDS, path)
    if "seed" in roll and roll["seed"].__class__ is not int:
        check.err(f"{path}.seed", f"expected an integer, got {_show(roll['seed'])}")
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
        check.fields(slot, _WEIGHTED_FIELDS, spath)
        if "variation" not in slot:
            check.err(f"{spath}.variation", "required")
        else:
            in_range(slot["variation"], f"{spath}.variation")
        weight = slot.get("weight")
        if weight.__class__ is not int or not 0 <= weight <= WEIGHT_TOTAL:
            check.err(
                f"{spath}.weight",
                f"expected an integer 0..{WEIGHT_TOTAL} (thousandths of "
                f"a percent), got {_show(weight)}",
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


def _clause(check: _Checker, clause: Any, path: str, *, segment: bool) -> None:
    if not check.obj(clause, path):
        return
    check.fields(clause, _CLAUSE_FIELDS, path)
    op = clause.get("op")
    if op is None:
        check.err(f"{path}.op", "required")
    elif op not in OPERATORS:
        check.err(
            f"{path}.op", f"unknown operator {_show(op)}; expected one of {', '.join(OPERATORS)}"
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
        check.err(f"{path}.negate", f"expected true or false, got {_show(clause['negate'])}")
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
        return f"expected a string, number or boolean, got {_show(value)}"
    if op in STRING_OPS:
        if not isinstance(value, str):
            return f"expected a string, got {_show(value)}"
        if op == "matches":
            if len(value) > LIMITS.max_regex_length:
                return (
                    f"regular expression is {len(value)} characters; "
                    f"limit {LIMITS.max_regex_length}"
                )
            return regex_problem(value)
        return None
    if op in NUMBER_OPS:
        return None if is_number(value) else f"expected a number, got {_show(value)}"
    if op in DATE_OPS:
        if parse_timestamp(value) is None:
            return (
                f"expected an RFC 3339 timestamp with a zone (2024-05-01T12:00:00Z) or "
                f"epoch milliseconds, got {_show(value)}"
            )
        return None
    if op in SEMVER_OPS:
        if parse_semver(value) is None:
            return f"expected a semantic version such as 1.2.3 or 2.0.0-rc.1, got {_show(value)}"
        return None
    # segment_match
    if isinstance(value, str) and KEY_RE.match(value):
        return None
    return f"expected a segment key, got {_show(value)}"
