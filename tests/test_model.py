"""Flag and segment validation: every rule, its JSON path, defaults, limits."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE, LIMITS
from flagwire.core.model import validate_flag, validate_segment
from tests.support.builders import clause, flag, prerequisite, rollout, rule, segment, target
from tests.test_evaluation import valid_flags

REFERENCE: dict[str, Any] = {
    "key": "new-checkout",
    "name": "New checkout",
    "description": "",
    "tags": ["checkout"],
    "on": True,
    "variations": [True, False],
    "off_variation": 1,
    "targets": [{"variation": 0, "values": ["user-1", "user-2"]}],
    "rules": [
        {
            "id": "staff",
            "clauses": [{"attribute": "email", "op": "ends_with", "values": ["@example.com"]}],
            "variation": 0,
        },
        {
            "id": "eu",
            "clauses": [
                {"attribute": "country", "op": "in", "values": ["NL", "DE"], "negate": False}
            ],
            "rollout": {
                "variations": [
                    {"variation": 0, "weight": 50000},
                    {"variation": 1, "weight": 50000},
                ],
                "bucket_by": "key",
            },
        },
    ],
    "fallthrough": {
        "rollout": {
            "variations": [{"variation": 0, "weight": 25000}, {"variation": 1, "weight": 75000}]
        }
    },
    "prerequisites": [{"key": "checkout-api", "variation": 0}],
    "salt": "new-checkout",
    "version": 7,
}


def problems(doc: Any, validate: Callable[[Any], Any] = validate_flag) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate(doc)
    return info.value.errors


def test_reference_document_validates_unchanged_but_for_defaults() -> None:
    original = copy.deepcopy(REFERENCE)
    out = validate_flag(REFERENCE)
    assert original == REFERENCE  # the input is not touched
    assert out["fallthrough"]["rollout"]["bucket_by"] == "key"
    assert out["rules"][0]["clauses"][0]["negate"] is False
    out["rules"][0]["id"] = "changed"
    assert REFERENCE["rules"][0]["id"] == "staff"  # a deep copy
    assert validate_flag(validate_flag(REFERENCE)) == validate_flag(REFERENCE)


def test_defaults() -> None:
    out = validate_flag({"key": "min", "variations": ["x"], "fallthrough": {"variation": 0}})
    assert out == {
        "key": "min",
        "name": "min",
        "description": "",
        "tags": [],
        "on": False,
        "variations": ["x"],
        "off_variation": None,
        "targets": [],
        "rules": [],
        "fallthrough": {"variation": 0},
        "prerequisites": [],
        "salt": "min",
    }


def test_server_managed_fields_are_allowed() -> None:
    doc = flag(
        "f",
        version=3,
        created_at="2024-01-01T00:00:00Z",
        updated_at=1700000000000,
        updated_by="alice",
    )
    assert validate_flag(doc)["updated_by"] == "alice"
    assert validate_segment(segment("s", version=0, updated_by=None))["version"] == 0


def test_error_message_format() -> None:
    doc = copy.deepcopy(REFERENCE)
    doc["rules"][1]["clauses"][0]["op"] = "startswith"
    with pytest.raises(ValidationError) as info:
        validate_flag(doc)
    assert str(info.value) == (
        'rules[1].clauses[0].op: unknown operator "startswith"; expected one of in, starts_with, '
        "ends_with, contains, matches, lt, lte, gt, gte, before, after, semver_eq, semver_lt, "
        "semver_gt, segment_match"
    )


def test_non_string_tag_is_not_a_duplicate() -> None:
    assert ("tags", "duplicate tags") not in problems(flag("f", tags=["a", 1]))


def test_all_problems_are_collected() -> None:
    doc = {**flag("f"), "onn": True, "off_variation": 5, "salt": ""}
    assert [path for path, _ in problems(doc)] == ["onn", "off_variation", "salt"]


def test_error_count_is_capped() -> None:
    doc = flag("f", targets=[target(0, *[str(i) for i in range(10)])])
    doc["targets"][0]["values"] = list(range(LIMITS.max_errors + 50))
    errors = problems(doc)
    assert len(errors) == LIMITS.max_errors + 1
    assert errors[-1] == ("", "... and 50 more problems")


def big(n: int) -> list[str]:
    return [f"v{i}" for i in range(n)]


def with_rule_clause(**c: Any) -> dict[str, Any]:
    base = {"attribute": "a", "op": "in", "values": ["x"]}
    return flag("f", rules=[{"clauses": [{**base, **c}], "variation": 0}])


# (name, document, path, message fragment)
FLAG_CASES: list[tuple[str, Any, str, str]] = [
    ("not an object", [], "", "must be a JSON object"),
    ("not JSON", {**flag("f"), "tags": {1, 2}}, "", "not plain JSON"),
    ("too big", flag("f", description="x" * LIMITS.max_document_bytes), "", "bytes; limit"),
    ("no key", {"variations": [True], "fallthrough": {"variation": 0}}, "key", "required"),
    ("bad key", flag("Bad Key"), "key", "is not a valid key"),
    ("newline key", flag("ok\n"), "key", "is not a valid key"),
    ("long key", flag("k" * 129), "key", "is not a valid key"),
    ("typo", {**flag("f"), "onn": True}, "onn", 'unknown field "onn"; did you mean "on"?'),
    ("on not bool", {**flag("f"), "on": 1}, "on", "expected true or false"),
    ("no variations", {"key": "f", "fallthrough": {"variation": 0}}, "variations", "required"),
    (
        "empty variations",
        flag("f", variations=[], off_variation=None),
        "variations",
        "at least 1 item",
    ),
    (
        "too many variations",
        flag("f", variations=big(LIMITS.max_variations + 1)),
        "variations",
        "too many items",
    ),
    (
        "mixed kinds",
        flag("f", variations=[True, "x"]),
        "variations[1]",
        "is a string but variations[0] is a bool",
    ),
    (
        "int and float mix fine, bool is no number",
        flag("f", variations=[1, 2.5, False]),
        "variations[2]",
        "is a bool",
    ),
    ("null variation", flag("f", variations=["a", None]), "variations[1]", "not a boolean"),
    ("off out of range", flag("f", off_variation=2), "off_variation", "out of range"),
    ("off is bool", flag("f", off_variation=True), "off_variation", "expected a variation index"),
    ("fallthrough index", flag("f", fallthrough=5), "fallthrough.variation", "out of range"),
    ("no fallthrough", {"key": "f", "variations": [True]}, "fallthrough", "required"),
    (
        "fallthrough both",
        flag("f", fallthrough={"variation": 0, "rollout": rollout(100)}),
        "fallthrough",
        "exactly one of variation or rollout, not both",
    ),
    ("fallthrough neither", flag("f", fallthrough={}), "fallthrough", "exactly one"),
    (
        "fallthrough typo",
        flag("f", fallthrough={"variation": 0, "varation": 1}),
        "fallthrough.varation",
        'did you mean "variation"',
    ),
    (
        "weights sum",
        flag("f", fallthrough=rollout(50, 49)),
        "fallthrough.rollout.variations",
        "weights sum to 99000",
    ),
    (
        "negative weight",
        flag(
            "f",
            fallthrough={
                "rollout": {
                    "variations": [
                        {"variation": 0, "weight": -1},
                        {"variation": 1, "weight": 100001},
                    ]
                }
            },
        ),
        "fallthrough.rollout.variations[0].weight",
        "expected an integer 0..100000",
    ),
    (
        "float weight",
        flag("f", fallthrough={"rollout": {"variations": [{"variation": 0, "weight": 100000.0}]}}),
        "fallthrough.rollout.variations[0].weight",
        "expected an integer",
    ),
    (
        "rollout slot index",
        flag("f", fallthrough=rollout(50, 50, variations=[0, 3])),
        "fallthrough.rollout.variations[1].variation",
        "out of range",
    ),
    (
        "bucket_by empty",
        flag("f", fallthrough=rollout(100, bucket_by="")),
        "fallthrough.rollout.bucket_by",
        "must not be empty",
    ),
    (
        "rollout without slots",
        flag("f", fallthrough={"rollout": {}}),
        "fallthrough.rollout.variations",
        "required",
    ),
    ("targets not list", flag("f", targets={}), "targets", "expected an array"),
    ("target index", flag("f", targets=[target(4, "u")]), "targets[0].variation", "out of range"),
    (
        "target value",
        flag("f", targets=[{"variation": 0, "values": ["a", 3]}]),
        "targets[0].values[1]",
        "context key",
    ),
    ("target no values", flag("f", targets=[{"variation": 0}]), "targets[0].values", "required"),
    (
        "too many target values",
        flag("f", targets=[target(0, *big(LIMITS.max_target_values + 1))]),
        "targets[0].values",
        "too many items",
    ),
    ("rule without clauses", flag("f", rules=[{"variation": 0}]), "rules[0].clauses", "required"),
    (
        "rule empty clauses",
        flag("f", rules=[{"clauses": [], "variation": 0}]),
        "rules[0].clauses",
        "at least 1 item",
    ),
    (
        "rule serves both",
        flag("f", rules=[{**rule(clause("a", "in", "x")), "rollout": rollout(100)}]),
        "rules[0]",
        "exactly one of variation or rollout",
    ),
    (
        "rule serves nothing",
        flag("f", rules=[{"clauses": [clause("a", "in", "x")]}]),
        "rules[0]",
        "exactly one",
    ),
    (
        "rule variation range",
        flag("f", rules=[rule(clause("a", "in", "x"), variation=9)]),
        "rules[0].variation",
        "out of range",
    ),
    (
        "duplicate rule ids",
        flag(
            "f", rules=[rule(clause("a", "in", "x"), id="r"), rule(clause("a", "in", "y"), id="r")]
        ),
        "rules[1].id",
        'duplicate rule id "r" (also rules[0])',
    ),
    (
        "too many rules",
        flag("f", rules=[rule(clause("a", "in", "x"))] * (LIMITS.max_rules + 1)),
        "rules",
        "too many items",
    ),
    (
        "too many clauses",
        flag("f", rules=[rule(*[clause("a", "in", "x")] * (LIMITS.max_clauses + 1))]),
        "rules[0].clauses",
        "too many items",
    ),
    (
        "unknown operator",
        with_rule_clause(op="startswith"),
        "rules[0].clauses[0].op",
        'unknown operator "startswith"',
    ),
    (
        "no operator",
        {
            **flag("f"),
            "rules": [{"clauses": [{"attribute": "a", "values": ["x"]}], "variation": 0}],
        },
        "rules[0].clauses[0].op",
        "required",
    ),
    (
        "no attribute",
        flag("f", rules=[{"clauses": [{"op": "in", "values": ["x"]}], "variation": 0}]),
        "rules[0].clauses[0].attribute",
        "required",
    ),
    (
        "empty attribute",
        with_rule_clause(attribute=""),
        "rules[0].clauses[0].attribute",
        "must not be empty",
    ),
    ("no values", with_rule_clause(values=None), "rules[0].clauses[0].values", "required"),
    ("empty values", with_rule_clause(values=[]), "rules[0].clauses[0].values", "at least 1"),
    (
        "too many values",
        with_rule_clause(values=big(LIMITS.max_clause_values + 1)),
        "rules[0].clauses[0].values",
        "too many items",
    ),
    (
        "negate not bool",
        with_rule_clause(negate="yes"),
        "rules[0].clauses[0].negate",
        "expected true or false",
    ),
    (
        "clause typo",
        with_rule_clause(negated=True),
        "rules[0].clauses[0].negated",
        'did you mean "negate"',
    ),
    (
        "in with null",
        with_rule_clause(values=[None]),
        "rules[0].clauses[0].values[0]",
        "expected a string, number or boolean",
    ),
    (
        "in with object",
        with_rule_clause(values=[{}]),
        "rules[0].clauses[0].values[0]",
        "expected a string, number or boolean",
    ),
    (
        "starts_with number",
        with_rule_clause(op="starts_with", values=[1]),
        "rules[0].clauses[0].values[0]",
        "expected a string",
    ),
    (
        "bad regex",
        with_rule_clause(op="matches", values=["(unclosed"]),
        "rules[0].clauses[0].values[0]",
        "invalid regular expression",
    ),
    (
        "lookahead: RE2 has none",
        with_rule_clause(op="matches", values=["^(?=admin)"]),
        "rules[0].clauses[0].values[0]",
        "invalid regular expression (RE2 syntax): invalid perl operator: (?=",
    ),
    (
        "backreference: RE2 has none",
        with_rule_clause(op="matches", values=[r"(a)\1"]),
        "rules[0].clauses[0].values[0]",
        "invalid regular expression (RE2 syntax): invalid escape sequence",
    ),
    (
        "\\Z is Python's; RE2 spells it \\z",
        with_rule_clause(op="matches", values=[r"x\Z"]),
        "rules[0].clauses[0].values[0]",
        "invalid escape sequence: \\Z",
    ),
    (
        "repetition too large",
        with_rule_clause(op="matches", values=["((a{100}){100}){100}"]),
        "rules[0].clauses[0].values[0]",
        "invalid repetition size",
    ),
    (
        "long regex",
        with_rule_clause(op="matches", values=["a" * (LIMITS.max_regex_length + 1)]),
        "rules[0].clauses[0].values[0]",
        "regular expression is 257 characters; limit 256",
    ),
    (
        "lt string",
        with_rule_clause(op="lt", values=["5"]),
        "rules[0].clauses[0].values[0]",
        "expected a number",
    ),
    (
        "gt bool",
        with_rule_clause(op="gt", values=[True]),
        "rules[0].clauses[0].values[0]",
        "expected a number",
    ),
    (
        "before garbage",
        with_rule_clause(op="before", values=["yesterday"]),
        "rules[0].clauses[0].values[0]",
        "RFC 3339",
    ),
    (
        "after without zone",
        with_rule_clause(op="after", values=["2024-01-01T00:00:00"]),
        "rules[0].clauses[0].values[0]",
        "RFC 3339",
    ),
    (
        "after bad date",
        with_rule_clause(op="after", values=["2024-02-30T00:00:00Z"]),
        "rules[0].clauses[0].values[0]",
        "RFC 3339",
    ),
    (
        "semver garbage",
        with_rule_clause(op="semver_eq", values=["1.2.x"]),
        "rules[0].clauses[0].values[0]",
        "semantic version",
    ),
    (
        "semver leading zero",
        with_rule_clause(op="semver_lt", values=["1.02.0"]),
        "rules[0].clauses[0].values[0]",
        "semantic version",
    ),
    (
        "segment_match bad key",
        flag("f", rules=[rule({"op": "segment_match", "values": ["No"]})]),
        "rules[0].clauses[0].values[0]",
        "expected a segment key",
    ),
    (
        "rule description",
        flag("f", rules=[{**rule(clause("a", "in", "x")), "description": "d" * 5000}]),
        "rules[0].description",
        "too long",
    ),
    (
        "self prerequisite",
        flag("f", prerequisites=[prerequisite("f")]),
        "prerequisites[0].key",
        "cannot be its own prerequisite",
    ),
    (
        "duplicate prerequisite",
        flag("f", prerequisites=[prerequisite("g"), prerequisite("g", 1)]),
        "prerequisites[1].key",
        'duplicate prerequisite "g"',
    ),
    (
        "prerequisite bad key",
        flag("f", prerequisites=[prerequisite("G")]),
        "prerequisites[0].key",
        "not a valid key",
    ),
    (
        "prerequisite variation",
        flag("f", prerequisites=[prerequisite("g", -1)]),
        "prerequisites[0].variation",
        "expected a variation index",
    ),
    (
        "prerequisite missing variation",
        flag("f", prerequisites=[{"key": "g"}]),
        "prerequisites[0].variation",
        "required",
    ),
    (
        "too many prerequisites",
        flag(
            "f", prerequisites=[prerequisite(f"p{i}") for i in range(LIMITS.max_prerequisites + 1)]
        ),
        "prerequisites",
        "too many items",
    ),
    ("empty salt", flag("f", salt=""), "salt", "must not be empty"),
    ("long name", flag("f", name="n" * (LIMITS.max_name_length + 1)), "name", "too long"),
    (
        "long description",
        flag("f", description="d" * (LIMITS.max_description_length + 1)),
        "description",
        "too long",
    ),
    ("too many tags", flag("f", tags=big(LIMITS.max_tags + 1)), "tags", "too many items"),
    ("duplicate tags", flag("f", tags=["a", "a"]), "tags", "duplicate tags"),
    ("empty tag", flag("f", tags=[""]), "tags[0]", "must not be empty"),
    ("tag not a string", flag("f", tags=["a", 1]), "tags[1]", "expected a string"),
    (
        "index without variations",
        {"key": "f", "fallthrough": {"variation": "0"}},
        "fallthrough.variation",
        "expected a variation index",
    ),
    ("long tag", flag("f", tags=["t" * (LIMITS.max_tag_length + 1)]), "tags[0]", "too long"),
    ("negative version", flag("f", version=-1), "version", "non-negative integer"),
    ("updated_at object", flag("f", updated_at={}), "updated_at", "string or a number"),
]


@pytest.mark.parametrize(
    ("name", "doc", "path", "fragment"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES]
)
def test_flag_problem(name: str, doc: Any, path: str, fragment: str) -> None:
    found = problems(doc)
    assert any(p == path and fragment in msg for p, msg in found), found


def test_regex_budget_is_per_document_and_names_the_pattern_that_overruns_it() -> None:
    heavy = [rf"(?:a|b)*a(?:a|b){{1000}}c{i}" for i in range(40)]
    # Each pattern is fine alone, and in a document of its own.
    validate_flag(with_rule_clause(op="matches", values=heavy[:1]))
    # Together they need more than the budget; the first pattern past it is named,
    # wherever the patterns are (here one per rule, in a segment too).
    rules = [{"clauses": [clause("a", "matches", p)], "variation": 0} for p in heavy]
    found = problems(flag("f", rules=rules))
    assert len(found) == 1, found
    path, message = found[0]
    assert path.startswith("rules[")
    assert path.endswith("].clauses[0].values[0]")
    assert 0 < int(path[len("rules[") : path.index("]")]) < len(heavy)
    assert f"{LIMITS.max_regex_memory} bytes compiled together" in message
    with pytest.raises(ValidationError, match="RE2's budget"):
        validate_segment(segment("s", rules=[rule(clause("a", "matches", *heavy))]))
    # Ordinary patterns: a hundred fit easily.
    emails = [rf"^[a-z0-9._%+-]+@example{i}\.com$" for i in range(100)]
    validate_flag(with_rule_clause(op="matches", values=emails))


SEGMENT_CASES: list[tuple[str, Any, str, str]] = [
    ("not an object", "s", "", "must be a JSON object"),
    ("no key", {"included": []}, "key", "required"),
    ("typo", {**segment("s"), "include": []}, "include", 'did you mean "included"'),
    ("included not strings", segment("s", included=["a", 1]), "included[1]", "context key"),
    ("excluded not list", {**segment("s"), "excluded": "a"}, "excluded", "expected an array"),
    (
        "nested segment",
        segment("s", rules=[rule({"op": "segment_match", "values": ["t"]})]),
        "rules[0].clauses[0].op",
        "not allowed inside a segment",
    ),
    (
        "rule serves",
        {**segment("s"), "rules": [{"clauses": [clause("a", "in", "x")], "variation": 0}]},
        "rules[0].variation",
        "unknown field",
    ),
    (
        "bad clause",
        segment("s", rules=[rule(clause("a", "lt", "x"))]),
        "rules[0].clauses[0].values[0]",
        "expected a number",
    ),
    (
        "too many included",
        segment("s", included=big(LIMITS.max_segment_values + 1)),
        "included",
        "too many items",
    ),
]


@pytest.mark.parametrize(
    ("name", "doc", "path", "fragment"), SEGMENT_CASES, ids=[c[0] for c in SEGMENT_CASES]
)
def test_segment_problem(name: str, doc: Any, path: str, fragment: str) -> None:
    found = problems(doc, validate_segment)
    assert any(p == path and fragment in msg for p, msg in found), found


def test_segment_defaults() -> None:
    assert validate_segment({"key": "s"}) == {
        "key": "s",
        "name": "s",
        "description": "",
        "tags": [],
        "included": [],
        "excluded": [],
        "rules": [],
    }
    out = validate_segment(segment("s", rules=[rule(clause("a", "in", "x"), id="r1")]))
    assert out["rules"] == [{"id": "r1", "clauses": [clause("a", "in", "x")]}]


def test_segment_match_needs_no_attribute() -> None:
    doc = flag("f", rules=[rule({"op": "segment_match", "values": ["beta"]})])
    assert "attribute" not in validate_flag(doc)["rules"][0]["clauses"][0]


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-01T00:00:00Z",
        "2024-01-01t00:00:00.123456789+05:30",
        "2024-01-01 00:00:00-00:00",
        0,
        1.7e12,
        -5,
    ],
)
def test_valid_timestamps(value: Any) -> None:
    validate_flag(with_rule_clause(op="before", values=[value]))


@pytest.mark.parametrize("value", ["0.0.0", "1.2.3-rc.1+build.7", "1", "1.2", "10.20.30-a-b.0"])
def test_valid_semvers(value: str) -> None:
    validate_flag(with_rule_clause(op="semver_gt", values=[value]))


def test_limits_table() -> None:
    table = LIMITS.as_dict()
    assert table["max_rules"] == LIMITS.max_rules
    assert all(isinstance(v, int) and v > 0 for v in table.values())
    with pytest.raises(AttributeError):
        LIMITS.max_rules = 1  # type: ignore[misc]


def test_key_re() -> None:
    assert KEY_RE.match("a")
    assert KEY_RE.match("0.a_b-c")
    assert KEY_RE.match("a" * 128)
    for bad in ("", "-a", "A", "a b", "a" * 129, "a\n", "é"):
        assert not KEY_RE.match(bad)


@settings(max_examples=100, deadline=None)
@given(doc=valid_flags())
def test_validation_is_idempotent(doc: dict[str, Any]) -> None:
    assert validate_flag(doc) == doc


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "key",
        "on",
        "variations",
        "off_variation",
        "targets",
        "rules",
        "fallthrough",
        "prerequisites",
        "salt",
        "tags",
        "included",
        "excluded",
        "clauses",
        "values",
        "op",
        "rollout",
        "variation",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    doc=st.dictionaries(field_names, json_values, max_size=8) | json_values,
    base=st.sampled_from([REFERENCE, segment("s"), {}]),
)
def test_validation_raises_only_validation_error(doc: Any, base: dict[str, Any]) -> None:
    merged = {**base, **doc} if isinstance(doc, dict) else doc
    for validate in (validate_flag, validate_segment):
        errors: list[tuple[str, str]] = []
        try:
            validate(merged)
        except ValidationError as exc:
            errors = exc.errors
            assert errors
        assert all(isinstance(p, str) and isinstance(m, str) for p, m in errors)
