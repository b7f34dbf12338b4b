"""Release plans, pure: each stage is a superset of the one before, for every context."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ValidationError
from flagwire.core.evaluation import Snapshot
from flagwire.core.model import validate_flag
from flagwire_server.release.plan import (
    TEMPLATES,
    flag_at_stage,
    flag_completed,
    old_variation,
    parse_stages,
)
from tests.support.builders import clause, flag, rule, segment

STAFF = segment("staff", included=["alice", "bob"])
BETA = segment("beta", rules=[{"clauses": [clause("plan", "in", "beta")]}])


def _plan(stages: list[dict[str, Any]], before: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "rp_1",
        "stages": parse_stages(stages),
        "variation": 0,
        "old_variation": old_variation(before),
    }


def _served(doc: dict[str, Any], ctx: dict[str, Any]) -> Any:
    snap = Snapshot({doc["key"]: validate_flag(doc)}, {"staff": STAFF, "beta": BETA})
    return snap.evaluate(doc["key"], ctx, "default").value


def _before() -> dict[str, Any]:
    return flag(
        "checkout",
        variations=["new", "old"],
        fallthrough=1,
        rules=[rule(clause("country", "in", "XX"), variation=1)],
    )


stages_st = st.lists(
    st.tuples(
        st.sampled_from([[], ["staff"], ["beta"]]),
        st.integers(min_value=0, max_value=100_000),
    ),
    min_size=1,
    max_size=6,
).map(
    lambda raw: (
        [
            {"segments": segs, "percent": pct / 1000}
            for segs, pct in zip([s for s, _ in raw], sorted(p for _, p in raw), strict=True)
        ]
        + [{"percent": 100}]
    )
)


@settings(max_examples=60, deadline=None)
@given(
    stages=stages_st,
    ctxs=st.lists(
        st.fixed_dictionaries(
            {
                "key": st.text(min_size=1, max_size=12),
                "plan": st.sampled_from(["beta", "free"]),
                "country": st.sampled_from(["NL", "XX"]),
            }
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_each_stage_is_a_superset_of_the_one_before(
    stages: list[dict[str, Any]], ctxs: list[dict[str, Any]]
) -> None:
    before = _before()
    plan = _plan(stages, before)
    docs = [flag_at_stage(before, plan, i) for i in range(len(plan["stages"]))]
    docs.append(flag_completed(before, plan))
    for ctx in [*ctxs, {"key": "alice"}]:
        seen = [_served(d, ctx) for d in docs]
        first_new = seen.index("new") if "new" in seen else len(seen)
        # Old until the first stage that serves new, new from then on.
        assert seen[:first_new] == ["old"] * first_new
        assert seen[first_new:] == ["new"] * (len(seen) - first_new)
        # Everyone reaches new, but those the flag's own rule keeps on old.
        in_segment = ctx["key"] == "alice" or (
            ctx.get("plan") == "beta" and ["beta"] in [s.get("segments") for s in stages]
        )
        assert seen[-1] == ("old" if ctx.get("country") == "XX" and not in_segment else "new")


def test_stage_flag_keeps_salt_rules_and_serves_segments_first() -> None:
    before = _before()
    plan = _plan(TEMPLATES["standard"], before)
    staff = flag_at_stage(before, plan, 0)
    assert staff.get("salt") == before.get("salt")
    assert staff["rules"][0]["id"] == "release:rp_1"
    assert staff["rules"][1:] == before["rules"]
    assert _served(staff, {"key": "alice"}) == "new"
    assert staff["fallthrough"]["rollout"]["variations"][0] == {"variation": 0, "weight": 0}
    ten = flag_at_stage(before, plan, 2)
    assert ten["fallthrough"]["rollout"]["variations"] == [
        {"variation": 0, "weight": 10_000},
        {"variation": 1, "weight": 90_000},
    ]
    assert ten["rules"][0]["clauses"][0]["values"] == ["staff"]  # earlier stages stay in
    done = flag_completed(before, plan)
    assert done["rules"][1:] == before["rules"]
    assert done["fallthrough"] == {"variation": 0}
    validate_flag(done)


@pytest.mark.parametrize(
    ("stages", "path"),
    [
        ([], "stages"),
        ([{"percent": 50}, {"percent": 10}], "stages[1].percent"),
        ([{"percent": 101}], "stages[0].percent"),
        ([{"percent": 0.0001}], "stages[0].percent"),
        ([{"percent": 5, "hold": -1}], "stages[0].hold"),
        ([{"segments": "staff"}], "stages[0].segments"),
        ([{"percent": 0}], "stages[0]"),
        ([{"percent": 5, "colour": 1}], "stages[0].colour"),
    ],
)
def test_bad_stages(stages: Any, path: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_stages(stages)
    assert path in [p for p, _ in err.value.errors]


def test_a_plan_starts_from_one_variation() -> None:
    with pytest.raises(ValidationError) as err:
        old_variation(flag("f", on=False, fallthrough={"variations": []}))
    assert {p for p, _ in err.value.errors} == {"on", "fallthrough"}
