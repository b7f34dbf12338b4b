"""A snapshot's flags kept as JSON, compiled on use, changed through an overlay (issue 16)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.changes import FlagChange, diff
from flagwire.core.evaluation import ErrorKind, Snapshot
from flagwire.core.protocol import SnapshotMessage, decode, encode
from tests.support.builders import flag

KEYS = [f"f{i}" for i in range(12)]

# A change: set flag key (on or off), or delete it.
changes = st.lists(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(["on", "off", "delete"])), max_size=80
)


def _apply(snap: Snapshot, model: dict[str, dict[str, Any]], key: str, what: str) -> Snapshot:
    version = snap.version + 1
    if what == "delete":
        model.pop(key, None)
        return snap.without_flag(key, version)
    doc = flag(key, on=what == "on", variations=[True, False])
    doc["version"] = version
    model[key] = doc
    return snap.with_flag(doc, version)


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, len(KEYS)), steps=changes)
def test_a_run_of_changes_matches_a_plain_dict_and_never_disturbs_older_snapshots(
    start: int, steps: list[tuple[str, str]]
) -> None:
    model = {key: flag(key, variations=[True, False]) for key in KEYS[:start]}
    snap = Snapshot(model, {}, 0)
    model = dict(model)
    history: list[tuple[Snapshot, dict[str, dict[str, Any]]]] = [(snap, dict(model))]
    for key, what in steps:
        snap = _apply(snap, model, key, what)
        history.append((snap, dict(model)))
    for old, expected in history:  # each snapshot still holds exactly what it held
        assert dict(old.flags) == expected
        assert len(old.flags) == len(expected)
        assert list(old.flags) == list(expected)  # insertion order, as a dict keeps it
        for key in KEYS:
            got = old.evaluate(key, {"key": "k"}, "default")
            if key in expected:
                assert got.value is expected[key]["on"]
            else:
                assert got.error_kind is ErrorKind.FLAG_NOT_FOUND


def test_a_change_copies_the_overlay_not_every_flag() -> None:
    snap = Snapshot({f"f{i}": flag(f"f{i}") for i in range(10_000)}, {}, 1)
    base = snap._base
    changed = snap
    for version in range(2, 50):
        changed = changed.with_flag(flag("f7", on=version % 2 == 0), version)
        assert changed._base is base  # the 10,000 entries are shared, not copied
    assert len(changed._over) == 1
    for i in range(200):  # distinct keys outgrow the overlay (√n): it is folded, once
        changed = changed.with_flag(flag(f"new{i}"), 100 + i)
    assert changed._base is not base
    assert len(changed._over) < 200
    assert len(changed.flags) == 10_200
    assert len(snap.flags) == 10_000
    assert "new0" not in snap.flags


def test_documents_are_kept_as_json_and_decoded_when_read() -> None:
    doc = flag("f", variations=["a", "b"])
    snap = Snapshot({"f": doc}, {}, 1)
    read = snap.flags["f"]
    assert read == doc
    assert read is not doc  # the snapshot kept the JSON, not the caller's dict
    doc["on"] = False  # changing the caller's dict changes nothing
    assert snap.flags["f"]["on"] is True
    assert snap.flags.get("f") is snap.flags["f"]  # recently read documents stay decoded
    assert snap.evaluate("f", {"key": "k"}, "x").value == "a"
    assert snap.flags.get("nope") is None
    assert "nope" not in snap.flags
    assert [] not in snap.flags
    assert snap.flags.get([]) is None  # type: ignore[call-overload]


def test_a_document_that_is_not_plain_json_is_kept_and_malformed() -> None:
    odd = {"key": "odd", "variations": {1, 2}}  # a set: no JSON for it
    snap = Snapshot({"odd": odd}, {}, 1)
    assert snap.flags["odd"] is odd
    assert snap.evaluate("odd", {"key": "k"}, 0).error_kind is ErrorKind.MALFORMED_FLAG


def test_a_snapshot_frame_from_kept_json_is_what_the_documents_encode_to() -> None:
    docs = {f"f{i}": flag(f"f{i}") for i in range(5)}
    snap = Snapshot(docs, {}, 3).with_flag(flag("g"), 4)
    from_json = encode(SnapshotMessage("e", "x", 4, snap.flags, snap.segments))
    from_docs = encode(SnapshotMessage("e", "x", 4, dict(snap.flags), {}))
    assert orjson.loads(from_json) == orjson.loads(from_docs)
    msg = decode(from_json)
    assert isinstance(msg, SnapshotMessage)
    assert msg.flags == {**docs, "g": flag("g")}


def test_diff_compares_json_and_reports_document_versions() -> None:
    a = flag("a")
    a["version"] = 4
    old = Snapshot({"a": a, "b": flag("b")}, {}, 7)
    same = dict(reversed(list(a.items())))  # equal document, other key order: no change
    new = Snapshot({"a": same, "c": flag("c")}, {}, 8)
    assert diff(old, new) == [
        FlagChange("b", 7, None, "flag", 8),  # no version: the one before
        FlagChange("c", None, 8, "flag", 8),
    ]
    assert [c.new_version for c in diff(None, old)] == [4, 7]


def test_flags_are_filed_under_copies_of_their_keys_made_together() -> None:
    # Issue 16: the decoder leaves each key among its document's objects; a snapshot
    # files its flags under fresh equal copies, so the keys a lookup compares sit
    # together in memory.  Other keys are kept as given (and are never found).
    docs = orjson.loads(orjson.dumps({k: flag(k) for k in ["alpha", "b-1", "gamma_2"]}))
    given_keys = list(docs)
    snap = Snapshot(docs)
    kept = list(snap.flags)
    assert kept == given_keys
    assert all(k is not g for k, g in zip(kept, given_keys, strict=True))
    assert all(snap.evaluate(k, {"key": "u"}, None).reason == "FALLTHROUGH" for k in given_keys)
    odd = Snapshot({1: flag("one")})  # type: ignore[dict-item]
    assert list(odd.flags) == [1]
    assert odd.evaluate(1, {"key": "u"}, None).error_kind == ErrorKind.MALFORMED_FLAG  # type: ignore[arg-type]
