"""The published JSON Schemas (schema/): up to date, and never stricter than the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings

from flagwire.core.errors import ValidationError
from flagwire.core.model import validate_flag, validate_segment
from flagwire.core.schema import SCHEMA_FILES, flag_schema, segment_schema
from tests.test_cli_ascode import folders

ROOT = Path(__file__).resolve().parents[1]
FLAG = jsonschema.Draft202012Validator(flag_schema())
SEGMENT = jsonschema.Draft202012Validator(segment_schema())


def test_committed_schemas_are_generated_from_the_model() -> None:
    for name, build in SCHEMA_FILES.items():
        committed = json.loads((ROOT / "schema" / name).read_text())
        assert committed == build(), f"schema/{name} is stale: run scripts/schema and commit it"


def test_schemas_are_valid_json_schema() -> None:
    for build in SCHEMA_FILES.values():
        jsonschema.Draft202012Validator.check_schema(build())


@given(folders())
@settings(max_examples=200, deadline=None)
def test_every_document_the_model_accepts_is_schema_valid(docs: Any) -> None:
    fl, segs = docs
    for f in fl:
        assert not list(FLAG.iter_errors(f)), f
        # As written in a folder: no server fields, key from the file name.
        assert not list(FLAG.iter_errors({k: v for k, v in f.items() if k != "key"}))
    for s in segs:
        assert not list(SEGMENT.iter_errors(s)), s


LAUNCHDARKLY_FLAG = {
    "key": "imported",
    "semantics": "launchdarkly",
    "variations": ["a", "b"],
    "fallthrough": {
        "rollout": {
            "seed": 61,
            "variations": [{"variation": 0, "weight": 30000}, {"variation": 1, "weight": 60000}],
        }
    },
    "client_side": True,
}
LAUNCHDARKLY_SEGMENT = {
    "key": "ld-seg",
    "semantics": "launchdarkly",
    "salt": "s",
    "rules": [{"clauses": [{"attribute": "a", "op": "in", "values": ["x"]}], "weight": 5000}],
}
FLAG_DOC = {
    "key": "f",
    "on": True,
    "variations": [True, False],
    "rules": [
        {
            "clauses": [
                {"attribute": "v", "op": "semver_gt", "values": ["1.2.3-rc.1"]},
                {
                    "attribute": "t",
                    "op": "before",
                    "values": ["2024-05-01T12:00:00Z", 1714564800000],
                },
                {"op": "segment_match", "values": ["beta"]},
            ],
            "variation": 0,
        }
    ],
    "fallthrough": {"variation": 1},
}


@pytest.mark.parametrize(
    ("validator", "validate", "doc"),
    [
        (FLAG, validate_flag, LAUNCHDARKLY_FLAG),
        (SEGMENT, validate_segment, LAUNCHDARKLY_SEGMENT),
        (FLAG, validate_flag, FLAG_DOC),
    ],
)
def test_hand_picked_valid_documents(validator: Any, validate: Any, doc: dict[str, Any]) -> None:
    validate(doc)
    assert not list(validator.iter_errors(doc))


def _bad(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc: Any = json.loads(json.dumps(FLAG_DOC))
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return dict(doc)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("onn",), True),  # a typo: unknown fields are errors
        (("on",), "yes"),
        (("key",), "Upper"),
        (("variations",), []),
        (("rules", 0, "clauses", 0, "op"), "equals"),
        (("rules", 0, "clauses", 0, "values"), ["v1"]),
        (("rules", 0, "clauses", 1, "values"), ["May 1st"]),
        (("rules", 0, "clauses", 2, "values"), ["Not A Key"]),
        (("rules", 0, "rollout"), {"variations": [{"variation": 0, "weight": 100000}]}),
        (("fallthrough",), {"variation": 1, "extra": 1}),
        (("fallthrough",), {"rollout": {"variations": [{"variation": 0, "weight": 100001}]}}),
        (("off_variation",), -1),
        (("tags",), ["a", "a"]),
    ],
)
def test_what_an_editor_flags_the_model_refuses_too(path: tuple[Any, ...], value: Any) -> None:
    doc = _bad(path, value)
    assert list(FLAG.iter_errors(doc)), doc
    with pytest.raises(ValidationError):
        validate_flag(doc)


def test_segment_match_is_not_a_segment_operator() -> None:
    doc = {"key": "s", "rules": [{"clauses": [{"op": "segment_match", "values": ["x"]}]}]}
    assert list(SEGMENT.iter_errors(doc))
    with pytest.raises(ValidationError):
        validate_segment(doc)
