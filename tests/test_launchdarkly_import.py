"""LaunchDarkly import: its bucketing bit for bit, its semantics, and a differential test.

The differential test feeds random LaunchDarkly flags and segments to the real
``launchdarkly-server-sdk`` (offline, through its file data source, as a
Relay Proxy dump would be read) and their conversion to flagwire's evaluator,
and compares every (value, variation, reason kind) over random contexts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flagwire.core.bucketing import launchdarkly_bucket
from flagwire.core.errors import ValidationError
from flagwire.core.evaluation import Snapshot
from flagwire.core.model import validate_flag, validate_segment
from flagwire_server.migrate.launchdarkly import convert

ldclient = pytest.importorskip("ldclient")
from ldclient import Context, LDClient  # noqa: E402
from ldclient.config import Config  # noqa: E402
from ldclient.integrations import Files  # noqa: E402


def _ld(**kw: Any) -> dict[str, Any]:
    return {"flags": kw.get("flags", {}), "segments": kw.get("segments", {})}


def _snapshot(data: dict[str, Any]) -> tuple[Snapshot, dict[str, str]]:
    conv = convert(data)
    snap = Snapshot({f["key"]: f for f in conv.flags}, {s["key"]: s for s in conv.segments})
    return snap, {**{k: k for k in data["flags"]}, **conv.keys}


# --- bucketing -------------------------------------------------------------------------


def test_launchdarkly_bucket_matches_its_published_vectors() -> None:
    # The values LaunchDarkly's SDKs test their bucketing with (flag "hashKey", salt "saltyA").
    assert launchdarkly_bucket("hashKey.saltyA", "userKeyA") == pytest.approx(0.42157587, abs=1e-8)
    assert launchdarkly_bucket("hashKey.saltyA", "userKeyB") == pytest.approx(0.6708485, abs=1e-7)
    assert launchdarkly_bucket("hashKey.saltyA", "userKeyC") == pytest.approx(0.10343106, abs=1e-8)
    assert launchdarkly_bucket("hashKey.saltyA", 33333) == launchdarkly_bucket(
        "hashKey.saltyA", "33333"
    )
    for unbucketable in (True, 3.0, 2.5, None, [1], {"a": 1}):
        assert launchdarkly_bucket("hashKey.saltyA", unbucketable) == 0.0


def test_seed_and_weights_only_under_launchdarkly_semantics() -> None:
    flag = {
        "key": "f",
        "variations": [True, False],
        "fallthrough": {"rollout": {"variations": [{"variation": 0, "weight": 30000}], "seed": 61}},
    }
    with pytest.raises(ValidationError) as err:
        validate_flag(flag)
    assert {p for p, _ in err.value.errors} == {
        "fallthrough.rollout.seed",
        "fallthrough.rollout.variations",
    }
    assert validate_flag({**flag, "semantics": "launchdarkly"})["semantics"] == "launchdarkly"
    with pytest.raises(ValidationError) as err:
        validate_flag({**flag, "semantics": "LaunchDarkly"})
    assert err.value.errors[0][0] == "semantics"
    with pytest.raises(ValidationError) as err:
        validate_segment({"key": "s", "rules": [{"clauses": [_ALWAYS], "weight": 5}]})
    assert err.value.errors[0][0] == "rules[0].weight"
    # flagwire's own flags keep their shape: no new field appears in their normal form.
    assert "semantics" not in validate_flag(
        {"key": "g", "variations": [1], "fallthrough": {"variation": 0}}
    )


_ALWAYS = {"attribute": "key", "op": "starts_with", "values": [""]}


# --- the three rules where LaunchDarkly and flagwire differ ----------------------------


def _flag(key: str, **kw: Any) -> dict[str, Any]:
    return {
        "key": key,
        "on": True,
        "variations": [True, False],
        "offVariation": 1,
        "fallthrough": {"variation": 0},
        "salt": "s",
        "version": 1,
        **kw,
    }


def test_segment_key_included_and_excluded_is_included_for_imported_segments() -> None:
    seg = {"key": "seg", "included": ["u1"], "excluded": ["u1"], "version": 1}
    rule = {
        "id": "r",
        "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["seg"]}],
        "variation": 1,
    }
    snap, _ = _snapshot(_ld(flags={"f": _flag("f", rules=[rule])}, segments={"seg": seg}))
    assert snap.evaluate("f", {"key": "u1"}, None).variation_index == 1
    # flagwire's own segments: excluded wins, as documented.
    native = Snapshot(
        {
            "f": {
                "key": "f",
                "on": True,
                "variations": [True, False],
                "fallthrough": {"variation": 0},
                "rules": [
                    {"clauses": [{"op": "segment_match", "values": ["seg"]}], "variation": 1}
                ],
            }
        },
        {"seg": {"key": "seg", "included": ["u1"], "excluded": ["u1"]}},
    )
    assert native.evaluate("f", {"key": "u1"}, None).variation_index == 0


def test_prerequisite_failing_its_own_prerequisite_counts_by_its_off_variation() -> None:
    # c is off; b requires c, so b serves its off variation 1 (PREREQUISITE_FAILED);
    # a requires b to serve 1: LaunchDarkly says satisfied, flagwire's own rule says not.
    flags = {
        "c": _flag("c", on=False),
        "b": _flag("b", prerequisites=[{"key": "c", "variation": 0}]),
        "a": _flag("a", prerequisites=[{"key": "b", "variation": 1}]),
    }
    snap, _ = _snapshot(_ld(flags=flags))
    assert snap.evaluate("b", {"key": "u"}, None).reason == "PREREQUISITE_FAILED"
    assert snap.evaluate("a", {"key": "u"}, None).reason == "FALLTHROUGH"
    native = {
        k: {key: v for key, v in d.items() if key != "semantics"} for k, d in snap.flags.items()
    }
    assert Snapshot(native).evaluate("a", {"key": "u"}, None).reason == "PREREQUISITE_FAILED"


def test_numbers_compare_as_doubles_for_imported_flags() -> None:
    big = 2**53
    rule = {
        "id": "r",
        "clauses": [{"attribute": "n", "op": "greaterThan", "values": [big]}],
        "variation": 1,
    }
    snap, _ = _snapshot(_ld(flags={"f": _flag("f", rules=[rule])}))
    # 2**53 + 1 is 2**53 as a double: not greater.
    assert snap.evaluate("f", {"key": "u", "n": big + 1}, None).variation_index == 0
    native = dict(snap.flags["f"])
    del native["semantics"]
    assert (
        Snapshot({"f": native}).evaluate("f", {"key": "u", "n": big + 1}, None).variation_index == 1
    )
    # An integer beyond any double: LaunchDarkly's SDK raises (ERROR), and so does the import.
    for n in (10**400, [10**400]):
        assert snap.evaluate("f", {"key": "u", "n": n}, None).reason == "ERROR"


def test_client_side_availability_and_tombstones() -> None:
    flags = {
        "web": _flag("web", clientSideAvailability={"usingEnvironmentId": True}),
        "server": _flag("server", clientSideAvailability=None),
        "gone": {"key": "gone", "version": 9, "deleted": True},
    }
    conv = convert(_ld(flags=flags))
    assert not conv.skipped
    assert [f.get("client_side") for f in conv.flags] == [True, None]
    assert conv.report == {"flag gone": ["deleted in LaunchDarkly (a tombstone): not imported"]}


def test_capital_keys_are_mapped_and_bucket_by_the_original() -> None:
    roll = {"variations": [{"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}
    data = _ld(flags={"New-Checkout": _flag("New-Checkout", fallthrough={"rollout": roll})})
    conv = convert(data)
    assert conv.keys == {"New-Checkout": "new-checkout"}
    assert "key mapped to new-checkout" in conv.report["flag New-Checkout"][0]
    assert conv.flags[0]["salt"] == "New-Checkout.s"


def test_what_cannot_be_imported_is_reported_per_flag() -> None:
    rules = [
        {
            "id": "org",
            "clauses": [
                {"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"]}
            ],
            "variation": 1,
        },
        {
            "id": "path",
            "clauses": [
                {
                    "contextKind": "user",
                    "attribute": "/address/city",
                    "op": "in",
                    "values": ["Paris"],
                }
            ],
            "variation": 1,
        },
        {
            "id": "exp",
            "clauses": [_ALWAYS_LD],
            "rollout": {"kind": "experiment", "variations": [{"variation": 0, "weight": 100000}]},
        },
    ]
    seg = {"key": "big", "unbounded": True, "version": 1}
    conv = convert(_ld(flags={"f": _flag("f", rules=rules)}, segments={"big": seg}))
    notes = " | ".join(conv.report["flag f"])
    assert "rules[0] (id 'org') dropped" in notes
    assert "context kind 'org'" in notes
    assert "rules[1] (id 'path') dropped" in notes
    assert "/address/city" in notes
    assert "experiment" in notes
    assert "big segment" in conv.report["segment big"][0]
    assert [r["id"] for r in conv.flags[0]["rules"]] == ["exp"]


_ALWAYS_LD = {"attribute": "key", "op": "startsWith", "values": [""]}


# --- the differential test against LaunchDarkly's own SDK -------------------------------

_COUNTRIES = ["NL", "DE", "US", "FR", "nl", "GB"]
_PLANS = ["free", "pro", "enterprise", "Pro"]
_VERSIONS = ["1.2.3", "2.0.0", "2.0.0-rc.1", "1.10.0", "1.2", "3", "0.9.1-beta.2", "bad"]
_DATES = [
    "2024-05-01T12:00:00Z",
    "2023-01-01T00:00:00+02:00",
    "2025-12-31T23:59:59.500Z",
    1714564800000,
    1700000000000,
]


def _context(rng: random.Random, i: int) -> dict[str, Any]:
    key = rng.choice([f"user-{i}", f"User-{i}", f"u{rng.randrange(10**6)}", f"{i}"])
    ctx: dict[str, Any] = {"key": key}
    pick: dict[str, Any] = {
        "country": lambda: rng.choice(_COUNTRIES),
        "age": lambda: rng.choice([rng.randrange(100), rng.random() * 100, "42", True]),
        "plan": lambda: rng.choice([rng.choice(_PLANS), rng.sample(_PLANS, 2)]),
        "email": lambda: rng.choice(["a@example.com", f"x{i}@corp.io", "b@EXAMPLE.com", ""]),
        "version": lambda: rng.choice(_VERSIONS),
        "created": lambda: rng.choice(_DATES),
        "org": lambda: rng.choice([f"org-{rng.randrange(20)}", rng.randrange(20), 2.0, False]),
        "beta": lambda: rng.choice([True, False]),
        "score": lambda: rng.choice([rng.randrange(-5, 5), 2**53 + 1, 0.5]),
    }
    for name, make in pick.items():
        if rng.random() < 0.7:
            ctx[name] = make()
    return ctx


def _clause(rng: random.Random, segments: list[str], *, in_segment: bool) -> dict[str, Any]:
    kinds = ["in", "str", "num", "date", "semver", "regex", "kind"]
    if segments and not in_segment:
        kinds += ["segment", "segment"]
    kind = rng.choice(kinds)
    negate = rng.random() < 0.2
    if kind == "in":
        attr = rng.choice(["country", "plan", "key", "beta", "age", "org"])
        pool = _COUNTRIES + _PLANS + [True, False, 1, 2, 42, "42", "user-3", "org-1"]
        c = {"attribute": attr, "op": "in", "values": rng.sample(pool, rng.randint(1, 4))}
    elif kind == "str":
        op = rng.choice(["startsWith", "endsWith", "contains"])
        vals = {
            "startsWith": ["a", "x", "user-", "b@"],
            "endsWith": ["@example.com", ".io", "1"],
            "contains": ["example", "corp", "-1", "ro"],
        }[op]
        c = {
            "attribute": rng.choice(["email", "key", "plan", "age"]),
            "op": op,
            "values": rng.sample(vals, rng.randint(1, 2)),
        }
    elif kind == "num":
        op = rng.choice(["lessThan", "lessThanOrEqual", "greaterThan", "greaterThanOrEqual"])
        c = {
            "attribute": rng.choice(["age", "score"]),
            "op": op,
            "values": rng.sample([18, 30, 50.5, 0, 2**53, -3], rng.randint(1, 2)),
        }
    elif kind == "date":
        c = {
            "attribute": "created",
            "op": rng.choice(["before", "after"]),
            "values": [rng.choice(_DATES)],
        }
    elif kind == "semver":
        op = rng.choice(["semVerEqual", "semVerLessThan", "semVerGreaterThan"])
        c = {
            "attribute": "version",
            "op": op,
            "values": rng.sample(["1.2.3", "2.0.0", "1.10.0", "2.0.0-rc.1"], rng.randint(1, 2)),
        }
    elif kind == "regex":
        c = {
            "attribute": rng.choice(["email", "key"]),
            "op": "matches",
            "values": [rng.choice([r"^user-[0-9]+$", r"example\.com$", r"[xX][0-9]", "^U"])],
        }
    elif kind == "kind":
        c = {"attribute": "kind", "op": "in", "values": [rng.choice(["user", "org"])]}
    else:
        c = {"attribute": "key", "op": "segmentMatch", "values": rng.sample(segments, 1)}
    c["negate"] = negate
    if rng.random() < 0.3 and kind not in ("segment", "kind"):
        c["contextKind"] = "user"
    return c


def _rollout(rng: random.Random, n: int) -> dict[str, Any]:
    slots = rng.randint(1, min(n, 4))
    cuts = sorted(rng.randrange(100_001) for _ in range(slots - 1))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100_000], strict=True)]
    roll: dict[str, Any] = {
        "variations": [{"variation": rng.randrange(n), "weight": w} for w in weights]
    }
    r = rng.random()
    if r < 0.25:
        roll["bucketBy"] = rng.choice(["org", "country", "age"])
    elif r < 0.35:
        roll["kind"] = "experiment"
        roll["bucketBy"] = "org"  # ignored by LaunchDarkly for experiments
    if rng.random() < 0.3:
        roll["seed"] = rng.randrange(-(10**6), 10**9)
    return roll


def _serve(rng: random.Random, n: int) -> dict[str, Any]:
    if rng.random() < 0.55:
        return {"rollout": _rollout(rng, n)}
    return {"variation": rng.randrange(n)}


def _random_data(rng: random.Random, nflags: int, nsegs: int) -> dict[str, Any]:
    segments: dict[str, Any] = {}
    for s in range(nsegs):
        key = rng.choice([f"seg-{s}", f"Seg{s}"])
        people = [f"user-{i}" for i in range(40)]
        seg: dict[str, Any] = {
            "key": key,
            "version": 1,
            "salt": f"salt{s}",
            "included": rng.sample(people, rng.randint(0, 8)),
            "excluded": rng.sample(people, rng.randint(0, 8)),
            "rules": [],
        }
        for _ in range(rng.randint(0, 2)):
            rule: dict[str, Any] = {
                "clauses": [_clause(rng, [], in_segment=True) for _ in range(rng.randint(1, 2))]
            }
            if rng.random() < 0.4:
                rule["weight"] = rng.randrange(100_001)
                if rng.random() < 0.5:
                    rule["bucketBy"] = rng.choice(["org", "country"])
            seg["rules"].append(rule)
        segments[key] = seg
    flags: dict[str, Any] = {}
    kinds = [
        lambda: [True, False],
        lambda: ["red", "green", "blue", "amber"][: rng.randint(2, 4)],
        lambda: [0, 1.5, 42][: rng.randint(2, 3)],
        lambda: [{"a": 1}, {"a": 2}, [1, 2]],
    ]
    for f in range(nflags):
        key = rng.choice([f"flag-{f}", f"Flag{f}", f"flag_{f}.x"])
        variations = rng.choice(kinds)()
        n = len(variations)
        flag: dict[str, Any] = {
            "key": key,
            "version": 1,
            "on": rng.random() < 0.85,
            "salt": rng.choice(["", f"{rng.getrandbits(64):x}"]),
            "variations": variations,
            "offVariation": rng.choice([None, *range(n)]),
            "targets": [],
            "rules": [],
            "fallthrough": _serve(rng, n),
            "prerequisites": [],
        }
        for v in rng.sample(range(n), rng.randint(0, n)):
            flag["targets"].append(
                {"variation": v, "values": [f"user-{rng.randrange(40)}" for _ in range(3)]}
            )
        for r in range(rng.randint(0, 4)):
            rule = {
                "id": f"rule-{f}-{r}",
                "clauses": [
                    _clause(rng, list(segments), in_segment=False) for _ in range(rng.randint(1, 3))
                ],
                **_serve(rng, n),
            }
            flag["rules"].append(rule)
        earlier = list(flags)
        if earlier and rng.random() < 0.3:
            for pkey in rng.sample(earlier, rng.randint(1, min(2, len(earlier)))):
                pn = len(flags[pkey]["variations"])
                flag["prerequisites"].append({"key": pkey, "variation": rng.randrange(pn)})
        flags[key] = flag
    return {"flags": flags, "segments": segments}


@pytest.fixture
def ld_client(tmp_path: Path) -> Iterator[Any]:
    holder: dict[str, Any] = {}

    def start(data: dict[str, Any]) -> Any:
        path = tmp_path / "ld-data.json"
        path.write_text(json.dumps(data))
        config = Config(
            "sdk-key-offline",
            update_processor_class=Files.new_data_source(paths=[str(path)]),
            send_events=False,
        )
        holder["client"] = LDClient(config=config, start_wait=5)
        assert holder["client"].is_initialized()
        return holder["client"]

    yield start
    if "client" in holder:
        holder["client"].close()


def _rollout_of(flag: dict[str, Any], reason: dict[str, Any]) -> bool:
    """Did LaunchDarkly's answer come from a rollout?"""
    if reason["kind"] == "FALLTHROUGH":
        return "rollout" in flag["fallthrough"]
    if reason["kind"] == "RULE_MATCH":
        return "rollout" in flag["rules"][reason["ruleIndex"]]
    return False


def test_imported_flags_evaluate_as_launchdarkly_does(ld_client: Any) -> None:
    rng = random.Random(20261202)
    data = _random_data(rng, nflags=120, nsegs=6)
    client = ld_client(data)
    conv = convert(data)
    assert not conv.skipped, conv.report
    snap = Snapshot({f["key"]: f for f in conv.flags}, {s["key"]: s for s in conv.segments})
    keys = {k: conv.keys.get(k, k) for k in data["flags"]}
    contexts = [_context(rng, i) for i in range(300)]

    total = agree = rollouts = rollouts_agree = 0
    differences: list[tuple[str, dict[str, Any], Any, Any]] = []
    for ctx in contexts:
        ld_ctx = Context.from_dict({"kind": "user", **ctx})
        assert ld_ctx.valid, ld_ctx.error
        for ld_key, flag in data["flags"].items():
            theirs = client.variation_detail(ld_key, ld_ctx, "default")
            ours = snap.evaluate(keys[ld_key], ctx, "default")
            a = (theirs.value, theirs.variation_index, theirs.reason["kind"])
            b = (ours.value, ours.variation_index, ours.reason)
            total += 1
            same = a == b
            agree += same
            if _rollout_of(flag, theirs.reason):
                rollouts += 1
                rollouts_agree += same
            if not same:
                differences.append((ld_key, ctx, a, b))
    print(f"{agree}/{total} agree; rollouts {rollouts_agree}/{rollouts}; {differences[:3]}")
    assert rollouts > 2_000, rollouts  # the test exercises rollouts for real
    assert rollouts_agree == rollouts, differences[:5]
    assert agree / total >= 0.999, (agree, total, differences[:10])
