"""JSON Schemas of the flag and segment documents, built from the model's own definitions.

Why generated: editors validate a flags-as-code folder while typing against
a published schema (``schema/flag.schema.json``, ``schema/segment.schema.json``
in the repository), and a schema written by hand beside the model would drift
from it.  So the field sets, limits, operators, key pattern and value parsers'
patterns are read here from ``model``, ``limits`` and ``operators``, and a
test regenerates the committed files and fails when they differ
(``scripts/schema`` rewrites them).

A schema cannot say everything the model checks: variation indexes against
the number of variations, weights summing to 100%, variations of one kind,
duplicate rule ids, regular expressions RE2 can compile.  The schema is
therefore looser, never stricter: every document the model accepts is valid
against it (a property test checks this), and ``flagwire validate`` runs the
model itself for the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from flagwire.core import _check_rules, model
from flagwire.core.limits import KEY_PATTERN, LIMITS, WEIGHT_TOTAL
from flagwire.core.operators import (
    _RFC3339_RE,
    _SEMVER_RE,
    DATE_OPS,
    NUMBER_OPS,
    OPERATORS,
    SEMVER_OPS,
    STRING_OPS,
)

__all__ = ["SCHEMA_FILES", "flag_schema", "segment_schema", "write_schemas"]

_S = dict[str, Any]
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

_KEY: Final[_S] = {"type": "string", "pattern": f"^{KEY_PATTERN}$"}
_INDEX: Final[_S] = {
    "type": "integer",
    "minimum": 0,
    "maximum": LIMITS.max_variations - 1,
    "description": "an index into variations (0 is the first)",
}
_NUMBER: Final[_S] = {"type": "number"}
_SERVER: Final[_S] = {
    "version": {
        "type": "integer",
        "minimum": 0,
        "description": "set by the server; leave it out of files",
    },
    **{
        name: {
            "type": ["string", "number", "null"],
            "description": "set by the server; leave it out of files",
        }
        for name in ("created_at", "updated_at", "updated_by")
    },
}


def _text(limit: int, *, empty: bool = True, what: str = "") -> _S:
    out: _S = {"type": "string", "maxLength": limit}
    if not empty:
        out["minLength"] = 1
    if what:
        out["description"] = what
    return out


def _array(items: _S, limit: int, *, min_items: int = 0, what: str = "") -> _S:
    out: _S = {"type": "array", "items": items, "maxItems": limit}
    if min_items:
        out["minItems"] = min_items
    if what:
        out["description"] = what
    return out


def _closed(fields: frozenset[str], props: _S, required: tuple[str, ...] = ()) -> _S:
    """An object with exactly the model's fields (unknown fields are errors there too)."""
    missing = set(fields) - set(props)
    extra = set(props) - set(fields)
    if missing or extra:  # a field added to the model must be described here too
        raise AssertionError(f"schema out of step with the model: {missing or ''} {extra or ''}")
    return {
        "type": "object",
        "properties": {name: props[name] for name in sorted(props)},
        "required": list(required),
        "additionalProperties": False,
    }


def _values_of(op_group: tuple[str, ...], items: _S) -> _S:
    return {
        "if": {"properties": {"op": {"enum": list(op_group)}}, "required": ["op"]},
        "then": {"properties": {"values": {"items": items}}},
    }


def _clause(*, segment: bool) -> _S:
    ops = [op for op in OPERATORS if not (segment and op == "segment_match")]
    schema = _closed(
        _check_rules.CLAUSE_FIELDS,
        {
            "attribute": _text(
                LIMITS.max_name_length,
                empty=False,
                what="the context attribute compared (not used by segment_match)",
            ),
            "op": {"enum": ops},
            "values": _array({}, LIMITS.max_clause_values, min_items=1),
            "negate": {"type": "boolean", "default": False},
        },
        ("op", "values"),
    )
    rfc3339 = {"type": "string", "pattern": f"^{_RFC3339_RE.pattern}$", "maxLength": 64}
    schema["allOf"] = [
        _values_of(("in",), {"type": ["string", "number", "boolean"]}),
        _values_of(STRING_OPS, {"type": "string"}),
        _values_of(("matches",), {"type": "string", "maxLength": LIMITS.max_regex_length}),
        _values_of(NUMBER_OPS, _NUMBER),
        _values_of(DATE_OPS, {"oneOf": [rfc3339, _NUMBER]}),
        _values_of(
            SEMVER_OPS, {"type": "string", "pattern": f"^{_SEMVER_RE.pattern}$", "maxLength": 256}
        ),
        {
            "if": {"properties": {"op": {"not": {"const": "segment_match"}}}},
            "then": {"required": ["attribute"]},
        },
    ]
    if not segment:
        schema["allOf"].append(_values_of(("segment_match",), _KEY))
    return schema


_LD_ONLY: Final = 'only with "semantics": "launchdarkly" (imported flags)'


def _rollout() -> _S:
    slot = _closed(
        _check_rules.WEIGHTED_FIELDS,
        {
            "variation": _INDEX,
            "weight": {
                "type": "integer",
                "minimum": 0,
                "maximum": WEIGHT_TOTAL,
                "description": f"thousandths of a percent; all weights sum to {WEIGHT_TOTAL}",
            },
        },
        ("variation", "weight"),
    )
    return _closed(
        _check_rules.LD_ROLLOUT_FIELDS,  # the larger set: the schema is looser, never stricter
        {
            "variations": _array(slot, LIMITS.max_variations, min_items=1),
            "bucket_by": _text(
                LIMITS.max_name_length, empty=False, what='the attribute hashed (default "key")'
            ),
            "seed": {"type": "integer", "description": _LD_ONLY},
        },
        ("variations",),
    )


def _serves() -> _S:
    """Exactly one of variation or rollout."""
    return {"oneOf": [{"required": ["variation"]}, {"required": ["rollout"]}]}


def _semantics() -> _S:
    return {
        "enum": list(model.SEMANTICS),
        "default": model.SEMANTICS[0],
        "description": "whose evaluation rules apply (docs/evaluation.md)",
    }


def _common(what: str) -> _S:
    return {
        "key": {**_KEY, "description": f"the {what}'s key; in a folder, the file name"},
        "name": _text(LIMITS.max_name_length, what="defaults to the key"),
        "description": _text(LIMITS.max_description_length),
        "tags": {
            **_array(_text(LIMITS.max_tag_length, empty=False), LIMITS.max_tags),
            "uniqueItems": True,
        },
        **_SERVER,
    }


def flag_schema() -> _S:
    """The JSON Schema (2020-12) of a flag document."""
    rule = _closed(
        _check_rules.RULE_FIELDS,
        {
            "id": _text(LIMITS.max_name_length, empty=False),
            "description": _text(LIMITS.max_description_length),
            "clauses": _array(_clause(segment=False), LIMITS.max_clauses, min_items=1),
            "variation": _INDEX,
            "rollout": _rollout(),
        },
        ("clauses",),
    )
    rule.update(_serves())
    fallthrough = _closed(_check_rules.SERVE_FIELDS, {"variation": _INDEX, "rollout": _rollout()})
    fallthrough.update(_serves())
    target = _closed(
        model._TARGET_FIELDS,
        {
            "variation": _INDEX,
            "values": _array({"type": "string"}, LIMITS.max_target_values),
        },
        ("variation", "values"),
    )
    prerequisite = _closed(
        model._PREREQ_FIELDS,
        {"key": _KEY, "variation": {"type": "integer", "minimum": 0}},
        ("key", "variation"),
    )
    variation = {"type": ["boolean", "string", "number", "object", "array"]}
    schema = _closed(
        model._FLAG_FIELDS,
        {
            **_common("flag"),
            "on": {"type": "boolean", "default": False, "description": "off serves off_variation"},
            "variations": _array(
                variation,
                LIMITS.max_variations,
                min_items=1,
                what="all booleans, all strings, all numbers, or all JSON",
            ),
            "off_variation": {
                "oneOf": [_INDEX, {"type": "null"}],
                "description": "served when off; null: the caller's default",
            },
            "targets": _array(target, LIMITS.max_targets),
            "rules": _array(rule, LIMITS.max_rules, what="in order; the first that matches serves"),
            "fallthrough": {**fallthrough, "description": "what everyone else gets"},
            "prerequisites": _array(prerequisite, LIMITS.max_prerequisites),
            "salt": _text(LIMITS.max_name_length, empty=False, what="defaults to the key"),
            "semantics": _semantics(),
            "client_side": {
                "type": "boolean",
                "default": False,
                "description": "client-side keys may evaluate it (OFREP)",
            },
        },
        ("variations", "fallthrough"),  # key: the API needs it; a folder's file name gives it
    )
    return {"$schema": _DIALECT, "title": "flagwire flag", **schema}


def segment_schema() -> _S:
    """The JSON Schema (2020-12) of a segment document."""
    rule = _closed(
        _check_rules.LD_SEGMENT_RULE_FIELDS,  # the larger set: the schema is looser, never stricter
        {
            "id": _text(LIMITS.max_name_length, empty=False),
            "description": _text(LIMITS.max_description_length),
            "clauses": _array(_clause(segment=True), LIMITS.max_clauses, min_items=1),
            "weight": {
                "type": "integer",
                "minimum": 0,
                "maximum": WEIGHT_TOTAL,
                "description": _LD_ONLY,
            },
            "bucket_by": _text(LIMITS.max_name_length, empty=False, what=_LD_ONLY),
        },
        ("clauses",),
    )
    keys = _array({"type": "string"}, LIMITS.max_segment_values)
    schema = _closed(
        model._SEGMENT_FIELDS,
        {
            **_common("segment"),
            "included": {**keys, "description": "context keys always in"},
            "excluded": {**keys, "description": "context keys never in (wins)"},
            "rules": _array(rule, LIMITS.max_rules, what="in when any rule's clauses all match"),
            "semantics": _semantics(),
            "salt": _text(LIMITS.max_name_length, empty=False, what=_LD_ONLY),
        },
    )
    return {"$schema": _DIALECT, "title": "flagwire segment", **schema}


#: The committed files and what builds each.
SCHEMA_FILES: Final = {"flag.schema.json": flag_schema, "segment.schema.json": segment_schema}


def write_schemas(folder: Path) -> list[Path]:
    """Write every schema file into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in SCHEMA_FILES.items():
        path = folder / name
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.append(path)
    return out
