"""Pure helpers of the console: serving summaries, diffs, the sign-in redirect guard."""

from __future__ import annotations

from typing import Any

import pytest

from flagwire_server.console.pages import _safe_next
from flagwire_server.console.present import diff, serving
from flagwire_server.console.render import json_script


def flag(**extra: Any) -> dict[str, Any]:
    return {
        "key": "f",
        "on": True,
        "variations": [True, False],
        "off_variation": 1,
        "fallthrough": {"variation": 0},
        **extra,
    }


def rollout(*weights: int) -> dict[str, Any]:
    return {
        "rollout": {"variations": [{"variation": i, "weight": w} for i, w in enumerate(weights)]}
    }


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        (flag(), "true"),
        (flag(on=False), "off → false"),
        (flag(on=False, off_variation=None), "off → default"),
        (flag(fallthrough=rollout(25000, 75000)), "25% true"),
        (flag(fallthrough=rollout(33333, 66667)), "33.333% true"),
        (flag(fallthrough=rollout(100000, 0)), "true"),
        (
            flag(variations=["red", "blue", "green"], fallthrough=rollout(50000, 25000, 25000)),
            "50% red / 25% blue / 25% green",
        ),
        (flag(rules=[{}], targets=[{}, {}]), "true · 1 rule · 2 targets"),
    ],
)
def test_serving_summary(doc: dict[str, Any], text: str) -> None:
    assert serving(doc) == text


def test_diff_is_field_by_field_and_skips_bookkeeping() -> None:
    before = flag(version=1, updated_at="a", tags=["x"])
    after = flag(
        version=2,
        updated_at="b",
        on=False,
        tags=["x", "y"],
        rules=[
            {"clauses": [{"attribute": "email", "op": "matches", "values": ["a"]}], "variation": 1}
        ],
    )
    rows = {r["path"]: r for r in diff(before, after)}
    assert rows["on"] == {"path": "on", "op": "changed", "old": "true", "new": "false"}
    assert rows["tags"]["new"] == '["x", "y"]'
    assert rows["rules[0].clauses[0].attribute"]["op"] == "added"
    assert "version" not in rows
    assert "updated_at" not in rows
    assert diff(after, after) == []


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("/envs/production/flags", "/envs/production/flags"),
        ("/keys?env=a", "/keys?env=a"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("https://evil.example", "/"),
        (None, "/"),
    ],
)
def test_sign_in_redirects_only_to_this_site(value: str | None, safe: str) -> None:
    assert _safe_next(value) == safe


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = str(json_script({"description": "</script><script>alert(1)</script>&"}))
    assert "</script" not in text
    assert "<" not in text
    assert "&" not in text
